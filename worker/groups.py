"""Group commit for booking decisions: the booking jobs running at once in one worker decide in one transaction.

While a group's transaction runs, the doctors of the jobs that start meanwhile wait, and the next transaction
decides them all. Idle, a job's decision starts at once; under load, one transaction (its locks, reads, writes and
commit: a handful of round trips) serves many doctors instead of one. It is as safe as a transaction a doctor: the
doctors' row locks are taken in ascending id order, then the patients', and a patient's booking confirmed with one
doctor is seen by the next doctor's decision (core/booking.py's decide_pending_requests).

A group that fails fails each of its jobs, whose doctors are then decided alone in this process until a decision of
theirs succeeds (and from a job's third try on, in any process: worker/jobs.py), so one bad request never keeps other
doctors' requests from being decided for long.
"""

from __future__ import annotations

import asyncio

from service.core.booking import HoldPolicy, decide_for_doctor, decide_for_doctors
from service.core.db import Database
from service.core.queue import Decided


class GroupCommit:
    def __init__(self, db: Database, batch_size: int, policy: HoldPolicy, max_doctors: int) -> None:
        self.db = db
        self.batch_size = batch_size
        self.policy = policy
        self.max_doctors = max_doctors
        self.waiting: dict[int, asyncio.Future[Decided]] = {}
        self.running: asyncio.Task[None] | None = None
        self.deciding: set[int] = set()  # the doctors of the transaction running now
        self.suspects: set[int] = set()  # doctors of failed groups: decided alone until that succeeds
        # Groups run (committed or failed) and the doctor batches they held: their ratio is the size of groups.
        self.transactions = 0
        self.decided_doctors = 0

    async def decide(self, doctor_id: int) -> Decided:
        """Up to `batch_size` pending requests of this doctor, decided (and committed) with those of the doctors
        waiting with it."""
        if doctor_id in self.suspects or doctor_id in self.waiting:  # (a second job: its Redis lock lapsed or is off)
            return await self.alone(doctor_id)
        decided = asyncio.get_running_loop().create_future()
        self.waiting[doctor_id] = decided
        if self.running is None:
            self.running = asyncio.create_task(self._run())
        return await asyncio.shield(decided)  # a job cancelled (its timeout) leaves the group's future alone

    def waiting_for(self, doctor_id: int) -> asyncio.Future[Decided] | None:
        """The decision another job of this worker waits for (its transaction not started): it will read every
        request stored before it starts."""
        return self.waiting.get(doctor_id)

    def serializes(self, doctor_id: int) -> bool:
        """Whether a transaction of this worker decides the doctor now or is about to: the next one for it starts
        after that one ends (this worker runs one at a time), so a job need not wait for the doctor's Redis lock
        held by the other one (it is a fast path: the doctor's row lock is the guarantee)."""
        return doctor_id in self.deciding or doctor_id in self.waiting

    async def alone(self, doctor_id: int) -> Decided:
        decided = await decide_for_doctor(self.db, doctor_id, self.batch_size, policy=self.policy)
        self.suspects.discard(doctor_id)
        return decided

    async def _run(self) -> None:
        try:
            while self.waiting:
                doctor_ids = list(self.waiting)[:self.max_doctors]  # the first to come (their locks go in id order)
                group = {doctor_id: self.waiting.pop(doctor_id) for doctor_id in doctor_ids}
                self.transactions += 1
                self.decided_doctors += len(group)
                self.deciding = set(group)
                try:
                    decided = await decide_for_doctors(self.db, doctor_ids, self.batch_size, policy=self.policy)
                except BaseException as exc:
                    self.suspects.update(group)
                    fail(group, exc)
                    if not isinstance(exc, Exception):  # cancelled (the worker stops): no more groups
                        raise
                    continue
                for each in decided:
                    if not (future := group[each.doctor_id]).done():
                        future.set_result(each)
        finally:
            self.deciding = set()
            fail(self.waiting, RuntimeError("the worker stopped deciding"))
            self.waiting = {}
            self.running = None


def fail(group: dict[int, asyncio.Future[Decided]], exc: BaseException) -> None:
    """Each job of the group raises `exc` (and tries again alone); one cancelled meanwhile (its timeout) no longer
    waits."""
    error = exc if isinstance(exc, Exception) else RuntimeError(f"the group's decision was interrupted: {exc!r}")
    for future in group.values():
        if not future.done():
            future.set_exception(error)
