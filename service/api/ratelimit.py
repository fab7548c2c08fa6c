"""The per-address limit on the endpoints that guess passwords or tokens, or cost a bcrypt hash.

The address is `scope["client"]`: the TCP peer's, unless that peer is a proxy uvicorn trusts
(FORWARDED_ALLOW_IPS), in which case it is the client the proxy names in X-Forwarded-For.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from redis.asyncio import Redis

from service.core import ratelimit
from service.core.settings import Settings


def limited_paths(settings: Settings) -> dict[str, tuple[str, int]]:
    """Each limited POST's path template: the action it counts as, and how many a minute one address may make."""
    guessing = settings.login_rate_limit_per_minute
    return {
        "/auth/login": ("login", guessing),
        "/auth/forgot-password": ("forgot-password", guessing),
        "/auth/reset-password": ("reset-password", guessing),
        "/auth/register": ("register", settings.register_rate_limit_per_minute),
    }


class AddressRateLimit(ASGIMiddleware):
    """Counts each limited POST against its client address, before the body is read; 429 past the limit.

    The app's Redis client is looked up per request: Litestar deep-copies a Router, middleware and all, as it
    registers it, and a client held here would be a copy with a connection pool of its own."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.limits = limited_paths(settings)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        # Routed already: the template, so `/auth/login/` counts as `/auth/login`.
        limited = self.limits.get(scope.get("path_template", "")) if scope["method"] == "POST" else None
        if limited is not None:
            action, per_minute = limited
            address = scope["client"][0] if scope.get("client") else "unknown"
            redis: Redis = Litestar.from_scope(scope).state.redis
            await ratelimit.limit(redis, action, f"address:{address}", per_minute)
        await next_app(scope, receive, send)
