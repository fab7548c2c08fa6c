"""The per-address limit on the endpoints that guess passwords (Litestar's limiter, counted in Redis)."""

from __future__ import annotations

from litestar import Request
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address

from service.api.extensions import RetryAfterRateLimitMiddleware
from service.core.settings import Settings

THROTTLED_PATHS = frozenset({"/auth/login", "/auth/forgot-password"})


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
