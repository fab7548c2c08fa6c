"""Accounts: register, login, the current user, forgot and reset password."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from arq.connections import ArqRedis
from litestar import Controller, get, post
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from msgspec import Meta

from service.db import ER_DUP_ENTRY, mysql_error_code
from service.dependencies import DatabaseDep, PasswordsDep, RedisDep, SettingsDep, UserCacheDep, UserDep
from service.errors import Conflict, InvalidInput, NotAuthenticated, problem_responses
from service.notify import publish_user_changed
from service.ratelimit import limit_per_account
from service.security import (
    MAX_PASSWORD_BYTES,
    MIN_PASSWORD_BYTES,
    PUBLIC,
    Role,
    hash_reset_token,
    issue_access_token,
    new_reset_token,
)
from service.settings import Settings
from service.times import from_row, utcnow

log = logging.getLogger("service")

# The patterns below are checked here by Python's `re` and published in the OpenAPI document, where they are
# ECMAScript, whose `\s` is not Python's (it lacks \x1c-\x1f and \x85, and has \ufeff). So whitespace is spelled
# out: exactly what Python's `\s` and str.strip() take for it.
WS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Loose on purpose: the real test of an address is whether mail reaches it. Spaces around it are trimmed.
Email = Annotated[str, Meta(max_length=255, pattern=rf"^[{WS}]*[^@{WS}]+@[^@{WS}]+\.[^@{WS}]+[{WS}]*$",
                            examples=["ada@clinic.example"])]
# bcrypt counts bytes: the characters here are a first cut, check_password_bytes() is the rule.
Password = Annotated[str, Meta(min_length=2, max_length=72, description="8 to 72 bytes in UTF-8")]
# Not blank: some character is not whitespace. Anchored and whole, though unanchored `\S` would do: schemathesis
# reads a lone `\S` as "no whitespace at all" and would call "Dr House" invalid.
NOT_BLANK = rf"^[\s\S]*[^{WS}][\s\S]*$"
Name = Annotated[str, Meta(min_length=1, max_length=255, pattern=NOT_BLANK)]
Specialty = Annotated[str, Meta(min_length=1, max_length=100, pattern=NOT_BLANK)]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    name: Name
    role: Role
    password: Password
    specialty: Specialty | None = None


class LoginIn(msgspec.Struct):
    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class ForgotPasswordIn(msgspec.Struct):
    email: Email


class ResetPasswordIn(msgspec.Struct):
    token: Annotated[str, Meta(min_length=1, max_length=256)]
    new_password: Password


class UserOut(msgspec.Struct):
    id: int
    email: str
    name: str
    role: Role
    specialty: str | None
    created_at: datetime


class TokenOut(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"


class AcceptedOut(msgspec.Struct):
    detail: str


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_password_bytes(password: str, field: str) -> None:
    if not MIN_PASSWORD_BYTES <= len(password.encode()) <= MAX_PASSWORD_BYTES:
        raise InvalidInput(f"must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes in UTF-8", field=field)


class AuthController(Controller):
    path = "/auth"
    tags = ["accounts"]

    @post("/register", **PUBLIC, status_code=HTTP_201_CREATED, operation_id="register",
          summary="Register a doctor or a patient", responses=problem_responses(400, 409, 413, 415, 503))
    async def register(self, data: Annotated[RegisterIn, Body()], db: DatabaseDep, passwords: PasswordsDep) -> UserOut:
        check_password_bytes(data.password, "password")
        if data.specialty is not None and data.role != "Doctor":
            raise InvalidInput("only doctors have a specialty", field="specialty")
        email = normalize_email(data.email)
        row = {
            "email": email,
            "name": data.name.strip(),
            "role": data.role,
            "specialty": data.specialty.strip() if data.specialty else None,
            "password_hash": await passwords.hash(data.password),
            "created_at": utcnow(),
        }
        try:
            _, user_id = await db.execute("insert_user", row)
        except Exception as exc:
            if mysql_error_code(exc) == ER_DUP_ENTRY:
                raise Conflict("an account with this email already exists") from None
            raise
        return from_row(UserOut, {**row, "id": user_id})

    @post("/login", **PUBLIC, status_code=200, operation_id="login", summary="Exchange credentials for a token",
          responses=problem_responses(400, 401, 413, 415, 429, 503))
    async def login(
        self, data: Annotated[LoginIn, Body()], db: DatabaseDep, redis: RedisDep, passwords: PasswordsDep,
        settings: SettingsDep,
    ) -> TokenOut:
        email = normalize_email(data.email)
        await limit_per_account(redis, "login", email, settings.login_rate_limit_per_minute)
        user = await db.fetch_one("find_user_by_email", {"email": email})
        # The same check runs (against a decoy hash) for an unknown email: same answer, same time.
        if not await passwords.verify(data.password, user["password_hash"] if user else None) or user is None:
            raise NotAuthenticated("email or password is wrong")
        token, lifetime = issue_access_token(user["id"], user["role"], user["token_version"], settings)
        return TokenOut(access_token=token, expires_in=lifetime)

    @get("/me", operation_id="getCurrentUser", summary="The user the token belongs to",
         responses=problem_responses(401, 503))
    async def me(self, user: UserDep, db: DatabaseDep) -> UserOut:
        row = await db.fetch_one("find_user_by_id", {"id": user.id})
        if row is None:  # deleted between the token check and here
            raise NotAuthenticated()
        return from_row(UserOut, row)

    @post("/forgot-password", **PUBLIC, status_code=HTTP_202_ACCEPTED, operation_id="forgotPassword",
          summary="Email a password-reset token, if the account exists",
          responses=problem_responses(400, 413, 415, 429, 503))
    async def forgot_password(
        self, data: Annotated[ForgotPasswordIn, Body()], db: DatabaseDep, redis: RedisDep, settings: SettingsDep
    ) -> AcceptedOut:
        email = normalize_email(data.email)
        await limit_per_account(redis, "forgot-password", email, settings.login_rate_limit_per_minute)
        user = await db.fetch_one("find_user_by_email", {"email": email})
        if user is not None:
            token, token_hash = new_reset_token()
            now = utcnow()
            async with db.transaction() as tx:
                await tx.execute("retire_reset_tokens", {"user_id": user["id"], "now": now})
                await tx.execute("insert_reset_token", {
                    "user_id": user["id"], "token_hash": token_hash, "now": now,
                    "expires_at": now + timedelta(minutes=settings.reset_token_minutes),
                })
            await send_reset_email(redis, user["email"], user["name"], token, settings)
        return AcceptedOut(detail="If an account exists for this email, a reset token is on its way to it")

    @post("/reset-password", **PUBLIC, status_code=HTTP_204_NO_CONTENT, operation_id="resetPassword",
          summary="Set a new password with a token from the reset email",
          responses=problem_responses(400, 413, 415, 503))
    async def reset_password(
        self, data: Annotated[ResetPasswordIn, Body()], db: DatabaseDep, redis: RedisDep, passwords: PasswordsDep,
        user_cache: UserCacheDep,
    ) -> None:
        check_password_bytes(data.new_password, "new_password")
        now = utcnow()
        async with db.transaction() as tx:
            token = await tx.fetch_one("lock_reset_token", {"token_hash": hash_reset_token(data.token)})
            if token is None or token["used_at"] is not None or token["expires_at"] <= now:
                raise InvalidInput("the reset token is invalid, used or expired", field="token")
            password_hash = await passwords.hash(data.new_password)
            await tx.execute("change_password", {"id": token["user_id"], "password_hash": password_hash})
            await tx.execute("retire_reset_tokens", {"user_id": token["user_id"], "now": now})
        # After the commit, so no process can cache the old token version again.
        user_cache.forget(token["user_id"])
        try:
            await publish_user_changed(redis, token["user_id"])
        except Exception:  # noqa: BLE001 - other processes still drop it within AUTH_CACHE_SECONDS
            log.warning("could not tell other API processes that user %s changed", token["user_id"])
        return None


async def send_reset_email(redis: ArqRedis, to: str, name: str, token: str, settings: Settings) -> None:
    """Queue the reset email. A lost email is not a lost booking: the user can simply ask again."""
    body = (
        f"Hello {name},\n\n"
        "Someone asked to reset the password of your Doctor Appointments account.\n"
        f"Your reset token (valid for {settings.reset_token_minutes} minutes, usable once):\n\n"
        f"    {token}\n\n"
        "Send it with your new password to POST /auth/reset-password.\n"
        "If you did not ask for this, ignore this email: your password stays as it is.\n"
    )
    try:
        await redis.enqueue_job("send_email", to, "Reset your password", body)
    except Exception:  # noqa: BLE001
        log.exception("could not queue the password-reset email")
