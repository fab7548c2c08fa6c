"""The per-doctor Redis lock: the fast path that keeps workers from piling onto one doctor.

It can expire or vanish with a failover, so it is never what prevents a double booking: MySQL's row lock is.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from functools import cache

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

# Delete the key only if it still holds our token: a holder whose lock expired must not free another's. Then,
# in the same round trip, publish what the holder has to announce (ARGV[2], ARGV[3]), if anything.
RELEASE_SCRIPT = """
local released = 0
if redis.call('get', KEYS[1]) == ARGV[1] then
    released = redis.call('del', KEYS[1])
end
if ARGV[2] then
    redis.call('publish', ARGV[2], ARGV[3])
end
return released
"""


@cache
def _release_script(redis: Redis) -> AsyncScript:
    return redis.register_script(RELEASE_SCRIPT)


class DoctorLock:
    def __init__(self, redis: Redis, doctor_id: int, ttl_ms: int) -> None:
        self.redis = redis
        self.key = f"lock:doctor:{doctor_id}"
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(16)

    def try_in(self, pipe: Pipeline) -> None:
        """One try at the lock inside the caller's pipeline (saving a round trip); its reply says if we hold it."""
        pipe.set(self.key, self.token, nx=True, px=self.ttl_ms)

    async def acquire(self, wait_seconds: float) -> bool:
        """SET NX PX, retried with capped exponential backoff for up to `wait_seconds`."""
        deadline = time.monotonic() + wait_seconds
        delay = 0.001
        while True:
            if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return True
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.025)

    async def release(self) -> bool:
        """Compare-and-delete; False if the lock had already expired (and maybe passed to someone else)."""
        return bool(await _release_script(self.redis)(keys=[self.key], args=[self.token]))

    def release_in(self, pipe: Pipeline, then_publish: tuple[str, bytes] | None = None) -> None:
        """`release` queued in the caller's pipeline, and `then_publish`, a (channel, message), published in the same
        script, released or not; the reply (1 if released) comes with the pipeline's. As EVAL: a pipeline of
        registered scripts asks SCRIPT EXISTS first, a round trip of its own."""
        pipe.eval(RELEASE_SCRIPT, 1, self.key, self.token, *(then_publish or ()))
