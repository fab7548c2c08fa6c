"""Schedule reads (slots, availability) served from each API process's response cache, dropped on change.

They are the hottest public reads, and a doctor's answer changes only when the doctor's schedule does (windows,
weekly hours, time zone, time off, appointment types, confirmed appointments). Litestar's response cache keeps
each answer for CACHE_SECONDS under a key that carries the doctor's schedule version in this process; every
change bumps the version, so the next read misses:

- the worker's decisions message names the doctor (a confirmation bumps it; see notifications.py);
- every other change (windows, hours, time zone, time off, types, cancellations) announces the doctor
  (queue.SCHEDULE_CHANGED) once committed, and bumps this process's version at once, so its own next read sees it.

Pub/sub is at-most-once and arrives a moment after the commit, so another process may answer from its cache for
that moment; CACHE_SECONDS bounds any staleness, and a resubscription bumps every version.

The same messages keep `KnownTaken`: the times this process knows the worker has just given away, so that a booking
for one is refused at once (409 slot_taken) instead of being stored, queued and decided only to lose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict, deque
from datetime import datetime
from functools import partial
from typing import Any

from litestar import Request
from litestar.config.response_cache import default_cache_key_builder
from litestar.stores.memory import MemoryStore
from redis.asyncio import Redis

from service.api.metrics import KNOWN_TAKEN
from service.core.db import Connection
from service.core.queue import enqueue_refill, publish_schedule_changed

log = logging.getLogger("service.schedule")

CACHE_SECONDS = 1
_KEY_IN_SCOPE = "schedule_cache_key"


class KnownTaken:
    """Bookings this process knows the worker would reject slot_taken: the span and type of each booking confirmed,
    or rejected slot_taken, a moment ago, whichever API process stored it (the decisions message names them). The
    same span of the same type asked for again overlaps that appointment (or what the rejected one clashed with) and
    passed every earlier rule then (notice, horizon, availability), so it would be rejected slot_taken: it is
    refused at once. (Only the same span and type: another may fail an earlier rule first, which the worker names
    instead.)

    Only ever a moment old: a doctor's spans are forgotten on any change but a confirmation (one may free time: a
    cancellation, a move, a window removed...), announced here at once for this process's own changes and by pub/sub
    for the others' (ScheduleVersions.changed), everything on a resubscription, and each span after `trust_seconds`
    anyway, so a missed message costs that long at most. Refusing on what the worker decided a moment ago is
    answering as if the booking had come a moment earlier (or, within those seconds of its start or notice, naming
    slot_taken where the worker would name in_past or too_soon). Bounded: `per_doctor` spans, `doctors` doctors.
    """

    def __init__(self, trust_seconds: float, per_doctor: int = 512, doctors: int = 10_000) -> None:
        self.trust_seconds = trust_seconds
        self.per_doctor = per_doctor
        self.doctors = doctors
        # doctor id → (start, end, type id) → when it was learned (time.monotonic), oldest first
        self._spans: dict[int, OrderedDict[tuple[datetime, datetime, int | None], float]] = {}

    def learn(self, doctor_id: int, start: datetime, end: datetime, type_id: int | None) -> None:
        """A booking of this span and type was confirmed, or rejected slot_taken, just now."""
        if self.trust_seconds <= 0:
            return
        if (spans := self._spans.get(doctor_id)) is None:
            if len(self._spans) >= self.doctors:
                self._spans.pop(next(iter(self._spans)))  # the doctor first learned about
            spans = self._spans[doctor_id] = OrderedDict()
        spans[start, end, type_id] = time.monotonic()
        spans.move_to_end((start, end, type_id))
        if len(spans) > self.per_doctor:
            spans.popitem(last=False)

    def taken(self, doctor_id: int, start: datetime, end: datetime, type_id: int | None) -> bool:
        """Whether a booking of [start, end) of type `type_id` is known to be rejected slot_taken."""
        spans = self._spans.get(doctor_id)
        learned = spans.get((start, end, type_id)) if spans is not None else None
        if learned is None or learned < time.monotonic() - self.trust_seconds:
            return False
        KNOWN_TAKEN.inc()
        return True

    def forget(self, doctor_id: int) -> None:
        self._spans.pop(doctor_id, None)

    def forget_all(self) -> None:
        self._spans.clear()


class ScheduleVersions:
    """This process's version of each doctor's schedule; bumping one retires every cached answer about it. And a
    short log of the latest changes (`mark`, `changed_since`), so the directory's ranking, which spans hundreds of
    doctors, learns which of them changed without asking each one. And the times it knows are taken (KnownTaken),
    forgotten with every change that may free time."""

    def __init__(self, log_length: int = 256, known_taken_seconds: float = 0) -> None:
        self.taken = KnownTaken(known_taken_seconds)
        self._versions: defaultdict[int, int] = defaultdict(int)
        self._epoch = 0
        self._listing = 0
        self._changes = 0
        self._log: deque[tuple[int, int]] = deque(maxlen=log_length)  # (change number, doctor id)

    def of(self, doctor_id: int) -> str:
        return f"{self._epoch}.{self._versions.get(doctor_id, 0)}"

    def listing(self) -> str:
        """The version of the directory's listing (which doctors match what, their zones and types): every change
        but a booking's decision bumps it, and a doctor's registration."""
        return f"{self._epoch}.{self._listing}"

    def changed(self, doctor_id: int, listing: bool = False, took_only: bool = False) -> None:
        """The doctor's schedule changed: by confirmations alone (`took_only`: time taken, none freed), by any other
        change of their bookings, or (`listing`) of their windows, hours, zone, time off or types."""
        if not took_only:
            self.taken.forget(doctor_id)
        self._versions[doctor_id] += 1
        if listing:
            self._listing += 1
        self._changes += 1
        self._log.append((self._changes, doctor_id))

    def all_changed(self) -> None:
        self.taken.forget_all()
        self._versions.clear()
        self._epoch += 1
        self._changes += 1
        self._log.clear()  # what came before is out of reach: changed_since says so

    def mark(self) -> int:
        """The number of changes so far, to ask `changed_since` about later."""
        return self._changes

    def changed_since(self, mark: int) -> set[int] | None:
        """The doctors whose schedule changed after `mark`; None if the log no longer reaches back that far (take it
        that everything changed)."""
        if mark == self._changes:
            return set()
        if not self._log or self._log[0][0] > mark + 1:
            return None
        changed = set()
        for number, doctor_id in reversed(self._log):
            if number <= mark:
                break
            changed.add(doctor_id)
        return changed

    def cache_key(self, request: Request[Any, Any, Any]) -> str:
        """The response cache's key: the request, and the doctor's version when the request came in.

        Litestar builds the key twice, to look up and to store; the second call returns the first's key, so an
        answer read before a change is stored under the version it was read at, which no later read asks for.
        """
        scope = request.scope
        if "doctor_id" not in request.path_params:  # not a schedule read: Litestar's own key
            return default_cache_key_builder(request)
        if (key := scope.get(_KEY_IN_SCOPE)) is None:  # type: ignore[misc]
            version = self.of(request.path_params["doctor_id"])
            key = scope[_KEY_IN_SCOPE] = f"{default_cache_key_builder(request)}#{version}"  # type: ignore[typeddict-unknown-key]
        return key


async def schedule_changed(tx: Connection, redis: Redis, versions: ScheduleVersions, doctor_id: int) -> None:
    """In a transaction that changes a doctor's schedule (under the doctor's row lock): once it is committed, retire
    the cached reads and, if anyone waits for this doctor's time, queue the waitlist's refill, since the change may
    have freed or added time. A patient joining the line takes the same lock, so either this transaction sees the
    entry, or the entry's own refill (queued after its commit) sees this change."""
    waiting = bool(await tx.fetch_value("has_waiting_entries", {"doctor_id": doctor_id}))
    tx.after_commit(partial(announce_schedule_change, redis, versions, doctor_id, refill=waiting))


async def announce_schedule_change(redis: Redis, versions: ScheduleVersions, doctor_id: int, *,
                                   refill: bool = False) -> None:
    """After a commit that changed a doctor's schedule: retire the cached answers, here at once, in the other API
    processes through Redis; with `refill`, queue the doctor's waitlist refill."""
    versions.changed(doctor_id, listing=True)
    try:
        await publish_schedule_changed(redis, doctor_id)
    except Exception as exc:  # noqa: BLE001 - committed already; the other processes' copies expire in a second
        log.warning("could not announce the schedule change of doctor %s: %r", doctor_id, exc)
    if refill:
        await enqueue_refill(redis, doctor_id)  # never raises: the sweep refills what this could not queue


async def drop_expired_responses(store: MemoryStore, every_seconds: float = 5) -> None:
    """The memory store drops an expired answer only when it is asked for again: sweep the rest."""
    while True:
        await asyncio.sleep(every_seconds)
        await store.delete_expired()
