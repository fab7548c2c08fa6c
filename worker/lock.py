"""The per-doctor Redis lock: the fast path that keeps workers from piling onto one doctor.

It can expire or vanish with a failover, so it is never what prevents a double booking: MySQL's row lock is.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

# Delete the key only if it still holds our token: a holder whose lock expired must not free another's.
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class DoctorLock:
    def __init__(self, redis: Redis, doctor_id: int, ttl_ms: int) -> None:
        self.redis = redis
        self.key = f"lock:doctor:{doctor_id}"
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(16)
        self._release = redis.register_script(RELEASE_SCRIPT)

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
        return bool(await self._release(keys=[self.key], args=[self.token]))
