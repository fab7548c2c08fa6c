"""Rate limits kept in Redis, so they hold across every API process."""

from __future__ import annotations

import hashlib

from litestar import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware, get_remote_address
from litestar.types import Receive, Scope, Send
from redis.asyncio import Redis

from service.errors import TooManyRequests
from service.settings import Settings

THROTTLED_PATHS = frozenset({"/auth/login", "/auth/forgot-password"})
WINDOW_SECONDS = 60


class RetryAfterRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's limiter, whose 429 lacks Retry-After (it sends RateLimit-* only): add it, as ours does."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            headers = dict(exc.headers or {})
            reset = headers.get(self.config.rate_limit_reset_header_key, "")
            headers.setdefault("Retry-After", str(max(int(reset), 1) if reset.isdigit() else WINDOW_SECONDS))
            exc.headers = headers
            raise


def per_address_limit(settings: Settings) -> RateLimitConfig:
    """Litestar's own limiter, per client address and per path, for the endpoints that guess passwords."""

    async def is_throttled(request: Request) -> bool:
        return request.method == "POST" and request.url.path in THROTTLED_PATHS

    return RateLimitConfig(
        rate_limit=("minute", settings.login_rate_limit_per_minute),
        store="rate_limit",
        check_throttle_handler=is_throttled,
        identifier_for_request=lambda request: f"{get_remote_address(request)}:{request.url.path}",
        set_rate_limit_headers=True,
        middleware_class=RetryAfterRateLimitMiddleware,
    )


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
