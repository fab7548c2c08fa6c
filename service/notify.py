"""Redis pub/sub for the API processes: decisions wake long polls, account changes empty the user cache,
schedule changes retire cached schedule reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from service.booking import DECISIONS_CHANNEL, Decision, read_decided_message
from service.schedule import SCHEDULE_CHANNEL, ScheduleVersions
from service.security import UserCache

USERS_CHANGED_CHANNEL = "accounts:changed"

log = logging.getLogger("service.notify")
Row = dict[str, Any]


async def publish_user_changed(redis: Redis, user_id: int) -> None:
    """Tell every API process to forget what it cached about this user (e.g. after a password change)."""
    await redis.publish(USERS_CHANGED_CHANNEL, str(user_id))


class Waiter:
    """One waiting request: woken by its decision (kept here) or by a reconnect (without one)."""

    __slots__ = ("decided_at", "decision", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.decision: Decision | None = None
        self.decided_at: datetime | None = None


class Notifications:
    """One subscription per API process, fanned out to the requests waiting in it."""

    def __init__(self, redis: Redis, users: UserCache, schedule: ScheduleVersions) -> None:
        self.redis = redis
        self.users = users
        self.schedule = schedule
        self._waiters: dict[int, set[Waiter]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="notifications")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(DECISIONS_CHANNEL, USERS_CHANGED_CHANNEL, SCHEDULE_CHANNEL)
                    # Whatever was published while we were not subscribed was missed.
                    self.users.forget_all()
                    self.schedule.all_changed()
                    self._wake_all()
                    while True:
                        message = await pubsub.get_message(timeout=30.0)
                        if message is None:
                            continue
                        channel = message["channel"].decode()
                        if channel == DECISIONS_CHANNEL:
                            self._wake(message["data"])
                        elif channel == SCHEDULE_CHANNEL:
                            self.schedule.changed(int(message["data"]))
                        else:
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
            log.warning("unreadable message on %s: %r", DECISIONS_CHANNEL, data[:200])
            return
        if any(decision.status == "confirmed" for decision in decided.decisions):
            self.schedule.changed(decided.doctor_id)  # before the pollers wake and read slots again
        for decision in decided.decisions:
            for waiter in self._waiters.get(decision.request_id, ()):
                waiter.decision, waiter.decided_at = decision, decided.decided_at
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

    async def wait_for_decision(self, request_id: int, read: Callable[[], Awaitable[Row]], timeout: float) -> Row:
        """The booking request as `read` gives it, once it has left `pending` or `timeout` seconds have passed.

        The watch is set before the first read, so a decision landing between the two is not missed. A decision
        published by the worker (after its commit) completes the row without another read; a wake-up without one
        (a reconnect) or the timeout reads again: pub/sub is at-most-once, the database has the last word.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._watch(request_id) as waiter:
            row = await read()
            while row["status"] == "pending" and (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):  # unlike wait_for, no task of its own
                        await waiter.event.wait()
                if (decision := waiter.decision) is not None:
                    return {**row, "status": decision.status, "reason": decision.reason,
                            "appointment_id": decision.appointment_id, "decided_at": waiter.decided_at}
                waiter.event.clear()
                row = await read()
        return row
