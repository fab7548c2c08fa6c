"""Accounts: users and roles, passwords (bcrypt), access tokens (JWT), password reset."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

import bcrypt
import jwt
import msgspec
from redis.asyncio import Redis

from service.core.db import ER_DUP_ENTRY, Database, Row, mysql_error_code
from service.core.errors import Conflict, InvalidInput, NotAuthenticated
from service.core.queue import enqueue_email, publish_user_changed
from service.core.ratelimit import limit_per_account
from service.core.settings import Settings
from service.core.times import utcnow

log = logging.getLogger("service.accounts")

Role = Literal["Doctor", "Patient"]
JWT_ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "role", "iat", "exp", "jti")
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit
MAX_EMAIL_CHARACTERS = 255  # users.email


class CurrentUser(msgspec.Struct, frozen=True):
    """The caller, as their access token and their row say."""

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


def user_from_row(row: Row) -> CurrentUser:
    return CurrentUser(id=row["id"], email=row["email"], name=row["name"], role=row["role"],
                       token_version=row["token_version"])


def new_reset_token() -> tuple[str, str]:
    """A random single-use token for the user, and the SHA-256 we keep of it."""
    token = secrets.token_urlsafe(32)
    return token, hash_reset_token(token)


def hash_reset_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_password_bytes(password: str, field: str) -> None:
    if not MIN_PASSWORD_BYTES <= len(password.encode()) <= MAX_PASSWORD_BYTES:
        raise InvalidInput(f"must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes in UTF-8", field=field)


async def register(db: Database, passwords: Passwords, *, email: str, name: str, role: Role, password: str,
                   specialty: str | None) -> Row:
    """A new account; 409 if the email has one already."""
    check_password_bytes(password, "password")
    if specialty is not None and role != "Doctor":
        raise InvalidInput("only doctors have a specialty", field="specialty")
    email = normalize_email(email)
    if len(email) > MAX_EMAIL_CHARACTERS:  # lower-casing can lengthen it: `İ` becomes two characters
        raise InvalidInput(f"must be at most {MAX_EMAIL_CHARACTERS} characters once lower-cased", field="email")
    row = {
        "email": email,
        "name": name.strip(),
        "role": role,
        "specialty": specialty.strip() if specialty else None,
        "password_hash": await passwords.hash(password),
        "created_at": utcnow(),
    }
    try:
        _, user_id = await db.execute("insert_user", row)
    except Exception as exc:
        if mysql_error_code(exc) == ER_DUP_ENTRY:
            raise Conflict("an account with this email already exists") from None
        raise
    return {**row, "id": user_id}


async def log_in(db: Database, redis: Redis, passwords: Passwords, settings: Settings, email: str,
                 password: str) -> tuple[str, int]:
    """An access token and its lifetime for the right password; 401 otherwise, in the same time either way."""
    email = normalize_email(email)
    await limit_per_account(redis, "login", email, settings.login_rate_limit_per_minute)
    user = await db.fetch_one("find_user_by_email", {"email": email})
    # The same check runs (against a decoy hash) for an unknown email: same answer, same time.
    if not await passwords.verify(password, user["password_hash"] if user else None) or user is None:
        raise NotAuthenticated("email or password is wrong")
    return issue_access_token(user["id"], user["role"], user["token_version"], settings)


async def find_user(db: Database, user_id: int) -> Row:
    row = await db.fetch_one("find_user_by_id", {"id": user_id})
    if row is None:  # deleted between the token check and here
        raise NotAuthenticated()
    return row


async def send_reset_token(db: Database, redis: Redis, settings: Settings, email: str) -> None:
    """Email a fresh reset token if the account exists (retiring older ones); say nothing either way."""
    email = normalize_email(email)
    await limit_per_account(redis, "forgot-password", email, settings.login_rate_limit_per_minute)
    user = await db.fetch_one("find_user_by_email", {"email": email})
    if user is None:
        return
    token, token_hash = new_reset_token()
    now = utcnow()
    async with db.transaction() as tx:
        await tx.execute("retire_reset_tokens", {"user_id": user["id"], "now": now})
        await tx.execute("insert_reset_token", {
            "user_id": user["id"], "token_hash": token_hash, "now": now,
            "expires_at": now + timedelta(minutes=settings.reset_token_minutes),
        })
    try:  # a lost email is not a lost booking: the user can simply ask again
        await enqueue_email(redis, user["email"], "Reset your password",
                            reset_email_text(user["name"], token, settings.reset_token_minutes))
    except Exception:  # noqa: BLE001
        log.exception("could not queue the password-reset email")


def reset_email_text(name: str, token: str, valid_minutes: int) -> str:
    return (
        f"Hello {name},\n\n"
        "Someone asked to reset the password of your Doctor Appointments account.\n"
        f"Your reset token (valid for {valid_minutes} minutes, usable once):\n\n"
        f"    {token}\n\n"
        "Send it with your new password to POST /auth/reset-password.\n"
        "If you did not ask for this, ignore this email: your password stays as it is.\n"
    )


async def reset_password(db: Database, redis: Redis, passwords: Passwords, token: str, new_password: str) -> int:
    """Set a new password with a reset token (used up); every earlier access token stops working. The user id."""
    check_password_bytes(new_password, "new_password")
    now = utcnow()
    async with db.transaction() as tx:
        found = await tx.fetch_one("lock_reset_token", {"token_hash": hash_reset_token(token)})
        if found is None or found["used_at"] is not None or found["expires_at"] <= now:
            raise InvalidInput("the reset token is invalid, used or expired", field="token")
        password_hash = await passwords.hash(new_password)
        await tx.execute("change_password", {"id": found["user_id"], "password_hash": password_hash})
        await tx.execute("retire_reset_tokens", {"user_id": found["user_id"], "now": now})
    try:  # after the commit, so no process can cache the old token version again
        await publish_user_changed(redis, found["user_id"])
    except Exception:  # noqa: BLE001 - other processes still drop it within AUTH_CACHE_SECONDS
        log.warning("could not tell other API processes that user %s changed", found["user_id"])
    return found["user_id"]
