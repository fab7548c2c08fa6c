"""Accounts: register, login, the current user, forgot and reset password."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, get, post
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from msgspec import Meta

from service.api.dependencies import (
    DatabaseDep,
    PasswordsDep,
    RedisDep,
    ScheduleDep,
    SettingsDep,
    UserCacheDep,
    UserDep,
)
from service.api.problems import problem_responses
from service.api.schedule_cache import announce_schedule_change
from service.api.schemas import NOT_BLANK, WS, Specialty, TimeZoneName
from service.api.security import PUBLIC
from service.core import accounts
from service.core.accounts import RegistrableRole, Role
from service.core.times import from_row

# Loose on purpose: the real test of an address is whether mail reaches it. Spaces around it are trimmed. A first cut:
# accounts.checked_email() asks the same of the address's normal form (NFKC, case-folded), which is what is kept.
Email = Annotated[str, Meta(max_length=255, pattern=rf"^[{WS}]*[^@{WS}]+@[^@{WS}]+\.[^@{WS}]+[{WS}]*$",
                            examples=["ada@clinic.example"])]
# bcrypt counts bytes: the characters here are a first cut, accounts.check_password_bytes() is the rule.
Password = Annotated[str, Meta(min_length=2, max_length=72, description="8 to 72 bytes in UTF-8")]
Name = Annotated[str, Meta(min_length=1, max_length=255, pattern=NOT_BLANK)]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "email": "ada.weber@clinic.example", "name": "Dr Ada Weber", "role": "Doctor", "password": "correct-horse-42",
        "specialty": "Cardiology", "timezone": "Europe/Berlin"}

    email: Email
    name: Name
    # Never Staff (a 400 like any other value): staff accounts are made by an operator, `python -m service
    # create-staff`.
    role: RegistrableRole
    password: Password
    specialty: Specialty | None = None
    timezone: TimeZoneName | None = msgspec.field(default=None)


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"email": "ada.weber@clinic.example", "password": "correct-horse-42"}

    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class ForgotPasswordIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"email": "ada.weber@clinic.example"}

    email: Email


class ResetPasswordIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"token": "Zq4xv7MTe2hRk9LpW3sYc8Nf", "new_password": "battery-staple-77"}

    token: Annotated[str, Meta(min_length=1, max_length=256)]
    new_password: Password


class UserOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 7, "email": "ada.weber@clinic.example", "name": "Dr Ada Weber", "role": "Doctor",
        "specialty": "Cardiology", "created_at": "2029-11-02T08:30:00Z"}

    id: int
    email: str
    name: str
    role: Role
    specialty: str | None
    created_at: datetime


class TokenOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3Iiwicm9sZSI6IkRvY3RvciJ9.kW8fQ2vJ0bX3",
        "expires_in": 1800, "token_type": "bearer"}

    access_token: str
    expires_in: int
    token_type: str = "bearer"


class AcceptedOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "detail": "If an account exists for this email, a reset token is on its way to it"}

    detail: str


class AuthController(Controller):
    path = "/auth"
    tags = ["accounts"]

    @post("/register", **PUBLIC, status_code=HTTP_201_CREATED, operation_id="register",
          summary="Register a doctor or a patient",
          description=("`role` is `Doctor` or `Patient`; anything else, `Staff` included, is a 400. Staff accounts "
                       "are made only by an operator (`python -m service create-staff EMAIL`)."),
          responses=problem_responses(400, 409, 413, 415, 429, 503))
    async def register(self, data: Annotated[RegisterIn, Body()], db: DatabaseDep, passwords: PasswordsDep,
                       redis: RedisDep, schedule_versions: ScheduleDep) -> UserOut:
        row = await accounts.register(db, passwords, email=data.email, name=data.name, role=data.role,
                                      password=data.password, specialty=data.specialty,
                                      timezone=data.timezone.value if data.timezone else None)
        if row["role"] == "Doctor":  # a new doctor in the directory's listings
            await announce_schedule_change(redis, schedule_versions, row["id"])
        return from_row(UserOut, row)

    @post("/login", **PUBLIC, status_code=200, operation_id="login", summary="Exchange credentials for a token",
          responses=problem_responses(400, 401, 413, 415, 429, 503))
    async def login(
        self, data: Annotated[LoginIn, Body()], db: DatabaseDep, redis: RedisDep, passwords: PasswordsDep,
        settings: SettingsDep,
    ) -> TokenOut:
        token, lifetime = await accounts.log_in(db, redis, passwords, settings, data.email, data.password)
        return TokenOut(access_token=token, expires_in=lifetime)

    @get("/me", operation_id="getCurrentUser", summary="The user the token belongs to",
         responses=problem_responses(401, 503))
    async def me(self, user: UserDep, db: DatabaseDep) -> UserOut:
        return from_row(UserOut, await accounts.find_user(db, user.id))

    @post("/forgot-password", **PUBLIC, status_code=HTTP_202_ACCEPTED, operation_id="forgotPassword",
          summary="Email a password-reset token, if the account exists",
          responses=problem_responses(400, 413, 415, 429, 503))
    async def forgot_password(
        self, data: Annotated[ForgotPasswordIn, Body()], db: DatabaseDep, redis: RedisDep, settings: SettingsDep
    ) -> AcceptedOut:
        await accounts.send_reset_token(db, redis, settings, data.email)
        return AcceptedOut(detail="If an account exists for this email, a reset token is on its way to it")

    @post("/reset-password", **PUBLIC, status_code=HTTP_204_NO_CONTENT, operation_id="resetPassword",
          summary="Set a new password with a token from the reset email",
          responses=problem_responses(400, 413, 415, 429, 503))
    async def reset_password(
        self, data: Annotated[ResetPasswordIn, Body()], db: DatabaseDep, redis: RedisDep, passwords: PasswordsDep,
        user_cache: UserCacheDep,
    ) -> None:
        user_id = await accounts.reset_password(db, redis, passwords, data.token, data.new_password)
        user_cache.forget(user_id)
        return None
