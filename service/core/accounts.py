"""Accounts: users and roles, passwords (bcrypt), access tokens (JWT), password reset."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import unicodedata
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import bcrypt
import jwt
import msgspec
from redis.asyncio import Redis

from service.core import ratelimit
from service.core.db import ER_DUP_ENTRY, Connection, Database, Row, mysql_error_code
from service.core.errors import Conflict, InvalidInput, NotAuthenticated
from service.core.queue import enqueue_email, publish_user_changed
from service.core.settings import Settings
from service.core.times import utcnow
from service.core.zones import check_timezone

log = logging.getLogger("service.accounts")

Role = Literal["Doctor", "Patient", "Staff"]
# What POST /auth/register may make. Staff accounts are made only by an operator (service/core/staff.py).
RegistrableRole = Literal["Doctor", "Patient"]
JWT_ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "role", "iat", "exp", "jti")
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit
MAX_EMAIL_CHARS = 255  # users.email
# What the HTTP layer's pattern asks of an address, asked again of its normal form (NFKC makes `＠` an `@`).
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class CurrentUser(msgspec.Struct, frozen=True):
    """The caller, as their access token and their row say."""

    id: int
    email: str
    name: str
    role: Role
    token_version: int


class PrioritySlots:
    """At most `size` holders at once; a waiter that is `urgent` is let in before every waiter that is not."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def held(self, *, urgent: bool) -> AsyncIterator[None]:
        if self._free:  # a free slot means nobody waits: a released slot goes to a waiter, not back to the pool
            self._free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            (self._urgent if urgent else self._others).append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if not turn.cancelled():  # handed the slot just as it was cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for waiting in (self._urgent, self._others):
            while waiting:
                turn = waiting.popleft()
                if not turn.done():  # a cancelled waiter has left
                    turn.set_result(None)
                    return
        self._free += 1


class Passwords:
    """bcrypt, run in a thread (it releases the GIL, so the event loop keeps serving), at most `concurrency` at
    once in this process. A login's check goes before every waiting hash (registrations, resets): a flood of
    registrations queues behind itself, and logins keep answering."""

    def __init__(self, rounds: int, concurrency: int = 2) -> None:
        self.rounds = rounds
        self._slots = PrioritySlots(concurrency)
        # Checked against when the email is unknown, so both failures cost the same time.
        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        async with self._slots.held(urgent=False):
            hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(self.rounds))
        return hashed.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        candidate = password.encode()
        # No stored password is longer than bcrypt's 72 bytes; still spend the time, then say no.
        fits = len(candidate) <= MAX_PASSWORD_BYTES
        stored = password_hash.encode() if password_hash else self._decoy_hash
        async with self._slots.held(urgent=True):
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


def normal_email(email: str) -> str:
    """The one spelling of an address that is stored and looked up: trimmed, NFKC, case-folded (and NFKC again:
    folding may decompose). `ＡＤＡ@x`, `Ada@x` and `ada@x` are one address; `ádá@x` is another."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email.strip()).casefold())


def checked_email(email: str) -> str:
    """The normal form of an email as given; 400 if that is no longer an address, or too long to store."""
    normal = normal_email(email)
    if len(normal) > MAX_EMAIL_CHARS:
        raise InvalidInput(f"must be at most {MAX_EMAIL_CHARS} characters in NFKC, case-folded", field="email")
    if not ADDRESS.fullmatch(normal):
        raise InvalidInput("is no email address in NFKC (full-width and other forms are read as ASCII)",
                           field="email")
    return normal


def account(user: Row | None, email: str) -> str:
    """Whom a per-account limit counts: the account found, however its email was spelled; for an email without
    one, that email (hashed: Redis holds no addresses), so unknown emails are limited alike."""
    return f"user:{user['id']}" if user else f"email:{hashlib.sha256(email.encode()).hexdigest()}"


def check_password_bytes(password: str, field: str) -> None:
    if not MIN_PASSWORD_BYTES <= len(password.encode()) <= MAX_PASSWORD_BYTES:
        raise InvalidInput(f"must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes in UTF-8", field=field)


async def register(db: Database, passwords: Passwords, *, email: str, name: str, role: RegistrableRole,
                   password: str, specialty: str | None, timezone: str | None = None) -> Row:
    """A new account; 409 if the email, in its normal form, has one already."""
    if role not in get_args(RegistrableRole):  # the HTTP schema says so too: this is for every other caller
        raise InvalidInput("must be Doctor or Patient: staff accounts are made by an operator "
                           "(python -m service create-staff)", field="role")
    email = checked_email(email)
    check_password_bytes(password, "password")
    if specialty is not None and role != "Doctor":
        raise InvalidInput("only doctors have a specialty", field="specialty")
    if timezone is not None and role != "Doctor":
        raise InvalidInput("only doctors have a time zone of their own", field="timezone")
    row = {
        "email": email,
        "name": name.strip(),
        "role": role,
        "specialty": specialty.strip() if specialty else None,
        "timezone": check_timezone(timezone) if timezone is not None else "UTC",
        "password_hash": await passwords.hash(password),
        "created_at": utcnow(),
    }
    return await insert_user(db, row)


async def insert_user(db: Database | Connection, row: Row) -> Row:
    """The account stored, with its id; 409 if the email (in its normal form) has one already."""
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
    email = normal_email(email)  # one that registration would refuse finds no account, like any unknown email
    user = await db.fetch_one("find_user_by_email", {"email": email})
    await ratelimit.limit(redis, "login", account(user, email), settings.login_rate_limit_per_minute)
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
    email = normal_email(email)
    user = await db.fetch_one("find_user_by_email", {"email": email})
    await ratelimit.limit(redis, "forgot-password", account(user, email), settings.login_rate_limit_per_minute)
    if user is None:
        return
    async with db.transaction() as tx:
        token = await store_reset_token(tx, user["id"], settings.reset_token_minutes)
    try:  # a lost email is not a lost booking: the user can simply ask again
        await enqueue_email(redis, user["email"], "Reset your password",
                            reset_email_text(user["name"], token, settings.reset_token_minutes))
    except Exception:  # noqa: BLE001
        log.exception("could not queue the password-reset email")


async def store_reset_token(tx: Connection, user_id: int, valid_minutes: int) -> str:
    """A fresh single-use token that sets the user's password (POST /auth/reset-password), retiring older ones;
    only its hash is kept."""
    token, token_hash = new_reset_token()
    now = utcnow()
    await tx.execute("retire_reset_tokens", {"user_id": user_id, "now": now})
    await tx.execute("insert_reset_token", {"user_id": user_id, "token_hash": token_hash, "now": now,
                                            "expires_at": now + timedelta(minutes=valid_minutes)})
    return token


def reset_token_text(token: str, valid_minutes: int) -> str:
    """The token and how to use it, as the reset email gives them (and `create-staff` prints them)."""
    return (
        f"Your reset token (valid for {valid_minutes} minutes, usable once):\n\n"
        f"    {token}\n\n"
        "Send it with your new password to POST /auth/reset-password.\n"
    )


def reset_email_text(name: str, token: str, valid_minutes: int) -> str:
    return (
        f"Hello {name},\n\n"
        "Someone asked to reset the password of your Doctor Appointments account.\n"
        f"{reset_token_text(token, valid_minutes)}"
        "If you did not ask for this, ignore this email: your password stays as it is.\n"
    )


def usable_reset_token(found: Row | None, now: datetime) -> Row:
    """The reset token's row if it can still be used; 400 otherwise."""
    if found is None or found["used_at"] is not None or found["expires_at"] <= now:
        raise InvalidInput("the reset token is invalid, used or expired", field="token")
    return found


async def reset_password(db: Database, redis: Redis, passwords: Passwords, token: str, new_password: str) -> int:
    """Set a new password with a reset token (used up); every earlier access token stops working. The user id."""
    check_password_bytes(new_password, "new_password")
    by_hash = {"token_hash": hash_reset_token(token)}
    # Hashed only for a token that can be used, and before the transaction: no row lock or pooled connection is
    # held while bcrypt waits its turn behind registrations. Checked again under the lock (used meanwhile?).
    usable_reset_token(await db.fetch_one("find_reset_token", by_hash), utcnow())
    password_hash = await passwords.hash(new_password)
    now = utcnow()
    async with db.transaction() as tx:
        found = usable_reset_token(await tx.fetch_one("lock_reset_token", by_hash), now)
        await tx.execute("change_password", {"id": found["user_id"], "password_hash": password_hash})
        await tx.execute("retire_reset_tokens", {"user_id": found["user_id"], "now": now})
    try:  # after the commit, so no process can cache the old token version again
        await publish_user_changed(redis, found["user_id"])
    except Exception:  # noqa: BLE001 - other processes still drop it within AUTH_CACHE_SECONDS
        log.warning("could not tell other API processes that user %s changed", found["user_id"])
    return found["user_id"]

