"""Who is calling: the bearer-token middleware's configuration, the token's user (cached a moment), role guards."""

from __future__ import annotations

import random
import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.security.jwt import JWTAuth, Token

from service.api.extensions import BearerAuthenticationMiddleware, PublicOperation
from service.core.accounts import JWT_ALGORITHM, REQUIRED_CLAIMS, CurrentUser, Role, user_from_row
from service.core.db import Database
from service.core.errors import Forbidden, NotAuthenticated
from service.core.settings import Settings

# Route handler kwargs (`@get(..., **PUBLIC)`) of an endpoint that needs no token: the auth middleware skips it, and
# its OpenAPI operation declares no security (`security: []`) where every other one declares bearer.
PUBLIC: dict[str, Any] = {"opt": {"exclude_from_auth": True}, "operation_class": PublicOperation}


class UserCache:
    """Token users remembered for a moment, so the hot path skips a query per request.

    A password change is pushed to every process (notifications.py), which forgets the user at once; a process that
    lost Redis forgets everyone. Anything else (an account deleted by hand) takes effect within `ttl` seconds
    (AUTH_CACHE_SECONDS; 0 turns the cache off). Each entry lives between half and all of `ttl`, so users cached
    together (a morning's logins) are not all read again in the same instant.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._users: dict[int, tuple[float, CurrentUser | None]] = {}

    async def get(self, db: Database, user_id: int) -> CurrentUser | None:
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await db.fetch_one("find_user_by_id", {"id": user_id})
        user = None if row is None else user_from_row(row)
        if self.ttl > 0:
            if len(self._users) > 100_000:
                self._users.clear()
            self._users[user_id] = (now + self.ttl * random.uniform(0.5, 1.0), user)
        return user

    def forget(self, user_id: int) -> None:
        self._users.pop(user_id, None)

    def forget_all(self) -> None:
        self._users.clear()


async def load_token_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> CurrentUser | None:
    """The token's user, if it still exists, has that role, and has not changed password since."""
    try:
        user_id = int(token.sub)
    except ValueError:
        return None
    state = connection.app.state
    user = await state.user_cache.get(state.db, user_id)
    if user is None or user.role != token.extras.get("role") or user.token_version != token.extras.get("ver"):
        return None
    return user


def jwt_auth(settings: Settings) -> JWTAuth[CurrentUser]:
    """Litestar's bearer-token middleware, HS256 only, every claim we issue required."""
    return JWTAuth[CurrentUser](
        token_secret=settings.jwt_secret,
        algorithm=JWT_ALGORITHM,
        require_claims=list(REQUIRED_CLAIMS),
        retrieve_user_handler=load_token_user,
        authentication_middleware_class=BearerAuthenticationMiddleware,
        exclude=["^/schema"],
        exclude_opt_key="exclude_from_auth",
        description="An access token from POST /auth/login",
    )


WHO: dict[Role, str] = {"Doctor": "a doctor", "Patient": "a patient", "Staff": "staff"}


def _require_role(*roles: Role):  # noqa: ANN202 - a guard factory
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        # async, so Litestar calls it inline instead of in a thread
        if "user" not in connection.scope:  # a request the auth middleware let through (OPTIONS): no one
            raise NotAuthenticated()
        if connection.user.role not in roles:
            raise Forbidden(f"Only {' or '.join(WHO[role] for role in roles)} may do this")

    guard.__name__ = "requires_" + "_or_".join(role.lower() for role in roles)
    return guard


# The role guards: who may call a route at all. Which object they may touch is the core's to decide (404 for other
# people's, 403 for another doctor's schedule). What staff may do, and why, is written in one place:
# service/core/staff.py.
requires_doctor = _require_role("Doctor")
requires_patient = _require_role("Patient")
requires_staff = _require_role("Staff")
requires_patient_or_staff = _require_role("Patient", "Staff")  # booking: for oneself, or for a named patient
requires_doctor_or_staff = _require_role("Doctor", "Staff")  # a doctor's schedule: their own, or anyone's
