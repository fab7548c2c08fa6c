"""Rate limits counted in Redis, one atomic counter per action and subject, so they hold exactly across every API
process: per client address (service/api/ratelimit.py) and per account (accounts.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from service.core.errors import TooManyRequests

WINDOW_SECONDS = 60


async def limit(redis: Redis, action: str, subject: str, per_minute: int) -> None:
    """Count one attempt at `action` by `subject`; past `per_minute` in its minute, raise 429 with Retry-After.

    INCR, EXPIRE NX and TTL in one MULTI/EXEC: one round trip, and no two processes can both read a count below the
    limit and both let their request in. The minute starts at the first attempt; refused attempts count too.
    """
    key = f"rate-limit:{action}:{subject}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
    if count > per_minute:
        raise TooManyRequests(retry_after=max(int(ttl), 1))
