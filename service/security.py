"""Password hashing, access tokens, the authenticated user and role guards."""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import bcrypt
import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from service.db import Database
from service.errors import Forbidden
from service.settings import Settings

Role = Literal["Doctor", "Patient"]
JWT_ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "role", "iat", "exp", "jti")
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit
# Route handler kwargs (`@get(..., **PUBLIC)`) of an endpoint that needs no token: the auth middleware skips it, and
# its OpenAPI operation overrides the document's bearer requirement with the empty one (anyone may call it).
PUBLIC: dict[str, Any] = {"opt": {"exclude_from_auth": True}, "security": [{}]}


class CurrentUser(msgspec.Struct, frozen=True):
    id: int
    email: str
    name: str
    role: Role
    token_version: int


class Passwords:
    """bcrypt, run in a thread: it releases the GIL, so hashing never blocks the event loop."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        # Checked against when the email is unknown, so both failures cost the same time.
        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(self.rounds))
        return hashed.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        candidate = password.encode()
        # No stored password is longer than bcrypt's 72 bytes; still spend the time, then say no.
        fits = len(candidate) <= MAX_PASSWORD_BYTES
        stored = password_hash.encode() if password_hash else self._decoy_hash
        matches = await asyncio.to_thread(bcrypt.checkpw, candidate[:MAX_PASSWORD_BYTES], stored)
        return matches and fits and password_hash is not None


def issue_access_token(user_id: int, role: str, token_version: int, settings: Settings) -> tuple[str, int]:
    """A signed HS256 token and its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "sub": str(user_id),
        "role": role,
        "ver": token_version,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=JWT_ALGORITHM), int(lifetime.total_seconds())


def new_reset_token() -> tuple[str, str]:
    """A random single-use token for the user, and the SHA-256 we keep of it."""
    token = secrets.token_urlsafe(32)
    return token, hash_reset_token(token)


def hash_reset_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserCache:
    """Token users remembered for a moment, so the hot path skips a query per request.

    A password change is pushed to every process (notify.py), which forgets the user at once; a process that
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
        user = None if row is None else CurrentUser(id=row["id"], email=row["email"], name=row["name"],
                                                    role=row["role"], token_version=row["token_version"])
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


class BearerAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, but only for `Authorization: Bearer <token>` (it would read any scheme)."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, token = connection.headers.get(self.auth_header, "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("A bearer token is required")
        return await self.authenticate_token(encoded_token=token.strip(), connection=connection)

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """Verify a token's signature once per process, not once per request: a cheap token check.

        The same string is the same signature, so a token verified before needs only its expiry checked again.
        Whether its user still exists and has not changed password is checked on every request, as before.
        """
        token = _verified_tokens.get(encoded_token)
        if token is None or token.exp <= datetime.now(UTC):
            result = await super().authenticate_token(encoded_token, connection)
            _verified_tokens.remember(encoded_token, result.auth)
            return result
        user = await self.retrieve_user_handler(token, connection)
        if not user:
            raise NotAuthorizedException()
        return AuthenticationResult(user=user, auth=token)


class VerifiedTokens(dict[str, Token]):
    """Tokens whose signature and claims were checked, by their encoded form; bounded, oldest dropped first."""

    limit = 50_000

    def remember(self, encoded: str, token: Token) -> None:
        if len(self) >= self.limit:
            del self[next(iter(self))]
        self[encoded] = token


_verified_tokens = VerifiedTokens()


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


def _require_role(role: Role):  # noqa: ANN202 - a guard factory
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        # async, so Litestar calls it inline instead of in a thread
        if connection.user.role != role:
            raise Forbidden(f"Only a {role.lower()} may do this")

    guard.__name__ = f"requires_{role.lower()}"
    return guard


requires_doctor = _require_role("Doctor")
requires_patient = _require_role("Patient")
