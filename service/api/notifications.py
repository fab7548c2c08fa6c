"""Redis pub/sub for the API processes: decisions wake long polls, account changes empty the user cache,
schedule changes retire cached schedule reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta

import msgspec
from redis.asyncio import Redis

from service.api.metrics import count_decided, count_stored
from service.api.schedule_cache import ScheduleVersions
from service.api.security import UserCache
from service.core.db import Row
from service.core.queue import DECISIONS, SCHEDULE_CHANGED, USERS_CHANGED, Decision, channel, read_decided_message

log = logging.getLogger("service.notifications")
# Requests this process stored, kept as they stand for a minute (at most so many), and decisions it heard of requests
# it did not (yet) know: enough for the long polls that follow a POST within seconds; older ones are read from MySQL.
# Memory follows the booking rate, not the time the process has run.
RECENT_REQUESTS = 20_000
RECENT_FOR = timedelta(seconds=60)
EARLY_DECISIONS = 5_000
# A remembered request still pending is trusted this long into a poll before MySQL is asked: its decision may
# have been lost (a worker killed between commit and publish, a message missed around a reconnect).
TRUST_PENDING_SECONDS = 1.0


def decided_row(row: Row, decision: Decision, decided_at: datetime) -> Row:
    return {**row, "status": decision.status, "reason": decision.reason,
            "appointment_id": decision.appointment_id, "decided_at": decided_at,
            "hold_id": decision.hold_id or row.get("hold_id")}


class Waiter:
    """One waiting request: woken by its decision (kept here) or by a reconnect (without one)."""

    __slots__ = ("decided", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.decided: tuple[Decision, datetime] | None = None


class Notifications:
    """One subscription per API process, fanned out to the requests waiting in it."""

    def __init__(self, redis: Redis, users: UserCache, schedule: ScheduleVersions) -> None:
        self.redis = redis
        self.users = users
        self.schedule = schedule
        self._waiters: dict[int, set[Waiter]] = defaultdict(set)
        self._recent: OrderedDict[int, Row] = OrderedDict()
        self._early: OrderedDict[int, tuple[Decision, datetime]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def remember(self, row: Row) -> None:
        """A request this process has just stored, so its long polls here need not read it back.

        The decisions message keeps it current. One that came before this call (a job of the doctor already queued
        may decide the request the moment it is committed) was kept aside for it. The metrics of bookings count
        here, where each request is stored and decided once (metrics.py).
        """
        count_stored()
        if (early := self._early.pop(row["id"], None)) is not None:
            count_decided(early[0], row["created_at"], early[1])
            row = decided_row(row, *early)
        self._recent[row["id"]] = row
        too_old = row["created_at"] - RECENT_FOR
        while self._recent and (len(self._recent) > RECENT_REQUESTS
                                or next(iter(self._recent.values()))["created_at"] < too_old):
            self._recent.popitem(last=False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="notifications")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        decisions = channel(self.redis, DECISIONS)
        schedule_changed = channel(self.redis, SCHEDULE_CHANGED)
        users_changed = channel(self.redis, USERS_CHANGED)
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(decisions, schedule_changed, users_changed)
                    # Whatever was published while we were not subscribed was missed.
                    self._recent.clear()
                    self._early.clear()
                    self.users.forget_all()
                    self.schedule.all_changed()
                    self._wake_all()
                    while True:
                        message = await pubsub.get_message(timeout=30.0)
                        if message is None:
                            continue
                        name = message["channel"].decode()
                        if name == decisions:
                            self._wake(message["data"])
                        elif name == schedule_changed:
                            self.schedule.changed(int(message["data"]), listing=True)
                        elif name == users_changed:
                            self.users.forget(int(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("notifications lost Redis (%r); reconnecting", exc)
                await asyncio.sleep(0.5)

    def _wake(self, data: bytes) -> None:
        try:
            decided = read_decided_message(data)
        except msgspec.DecodeError:  # not from our worker: nobody to wake (and no reason to drop the subscription)
            log.warning("unreadable decisions message: %r", data[:200])
            return
        if any(decision.status == "confirmed" for decision in decided.decisions):  # before the pollers read slots
            moved = any(decision.rescheduled_from is not None for decision in decided.decisions)
            self.schedule.changed(decided.doctor_id, took_only=not moved)  # a move frees its old time
        for doctor_id in decided.freed_doctor_ids:  # appointments moved away from them
            self.schedule.changed(doctor_id)
        for decision in decided.decisions:
            if decision.taken is not None:  # whichever process stored the request (the woken polls run after this)
                self.schedule.taken.learn(decided.doctor_id, *decision.taken)
            request_id, outcome = decision.request_id, (decision, decided.decided_at)
            if (row := self._recent.get(request_id)) is not None:
                if row["status"] == "pending":  # pub/sub is at most once, but the same decision twice is not counted
                    count_decided(decision, row["created_at"], decided.decided_at)
                self._recent[request_id] = decided_row(row, *outcome)
            else:
                self._early[request_id] = outcome
                if len(self._early) > EARLY_DECISIONS:
                    self._early.popitem(last=False)
            for waiter in self._waiters.get(request_id, ()):
                waiter.decided = outcome
                waiter.event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()

    @contextlib.contextmanager
    def _watch(self, request_id: int) -> Iterator[Waiter]:
        waiter = Waiter()
        self._waiters[request_id].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[request_id].discard(waiter)
            if not self._waiters[request_id]:
                del self._waiters[request_id]

    async def wait_for_decision(
        self, request_id: int, user_id: int, read: Callable[[], Awaitable[Row]], timeout: float
    ) -> Row:
        """The user's booking request (its patient's, or its requester's), once it has left `pending` or `timeout`
        seconds have passed.

        The first look is at the requests this process stored (if it is this user's and the caller will wait:
        a remembered "pending" only starts a wait, for at most TRUST_PENDING_SECONDS), else `read` (MySQL). The
        watch is set before it, so a decision landing in between is not missed. A decision published by the
        worker (after its commit) completes the row without another read; a wake-up without one (a reconnect) or
        the end of a wait reads again: pub/sub is at-most-once, the database has the last word.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._watch(request_id) as waiter:
            row = self._recent.get(request_id)
            trusted_until = deadline
            if (row is None or user_id not in (row["patient_id"], row["requested_by"])
                    or (row["status"] == "pending" and timeout <= 0)):
                row = await read()
            elif row["status"] == "pending":
                trusted_until = min(deadline, loop.time() + TRUST_PENDING_SECONDS)
            while row["status"] == "pending" and (remaining := trusted_until - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # unlike wait_for, no task of its own
                        await waiter.event.wait()
                if waiter.decided is not None:
                    return decided_row(row, *waiter.decided)
                waiter.event.clear()
                row = await read()
                trusted_until = deadline
        return row
