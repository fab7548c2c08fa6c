"""Redis pub/sub for the API processes: decisions wake long polls, account changes empty the user cache."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from redis.asyncio import Redis

from service.booking import DECISIONS_CHANNEL

USERS_CHANGED_CHANNEL = "accounts:changed"

log = logging.getLogger("service.notify")
T = TypeVar("T")


async def publish_user_changed(redis: Redis, user_id: int) -> None:
    """Tell every API process to forget what it cached about this user (e.g. after a password change)."""
    await redis.publish(USERS_CHANGED_CHANNEL, str(user_id))


class Notifications:
    """One subscription per API process, fanned out to the requests waiting in it."""

    def __init__(self, redis: Redis, on_user_changed: Callable[[int], None]) -> None:
        self.redis = redis
        self.on_user_changed = on_user_changed
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
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
                    await pubsub.subscribe(DECISIONS_CHANNEL, USERS_CHANGED_CHANNEL)
                    self._wake_all()  # decisions made while we were not subscribed were missed
                    while True:
                        message = await pubsub.get_message(timeout=30.0)
                        if message is None:
                            continue
                        if message["channel"] == DECISIONS_CHANNEL.encode():
                            self._wake(message["data"])
                        else:
                            self.on_user_changed(int(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("notifications lost Redis (%r); reconnecting", exc)
                await asyncio.sleep(0.5)

    def _wake(self, data: bytes) -> None:
        for request_id in data.split(b","):
            for event in self._waiters.get(int(request_id), ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def _watch(self, request_id: int) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[request_id].add(event)
        try:
            yield event
        finally:
            self._waiters[request_id].discard(event)
            if not self._waiters[request_id]:
                del self._waiters[request_id]

    async def wait_until(
        self, request_id: int, read: Callable[[], Awaitable[T]], is_final: Callable[[T], bool], timeout: float
    ) -> T:
        """Read the request, and until it is final or `timeout` passes, read again each time it is signalled.

        The watch is set before the first read, so a decision landing between the two is not missed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._watch(request_id) as signalled:
            state = await read()
            while not is_final(state) and (remaining := deadline - loop.time()) > 0:
                # Pub/sub is at-most-once: whether woken or timed out, the database has the last word.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signalled.wait(), remaining)
                signalled.clear()
                state = await read()
        return state
