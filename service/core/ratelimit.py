"""Per-account rate limits, counted in Redis so they hold across every API process."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from service.core.errors import TooManyRequests

WINDOW_SECONDS = 60


async def limit_per_account(redis: Redis, action: str, email: str, limit: int) -> None:
    """Count one attempt at `action` for this email; raise 429 with Retry-After past `limit` a minute.

    The address limit alone lets a botnet try one account from many addresses; this caps the account too.
    """
    key = f"rate-limit:account:{action}:{hashlib.sha256(email.encode()).hexdigest()}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
    if count > limit:
        raise TooManyRequests(retry_after=max(int(ttl), 1))
