"""Settings, read once from the environment at startup and validated with a message naming the variable."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta

log = logging.getLogger("service")

Environment = Literal["development", "test", "production"]
MIN_SECRET_BYTES = 32


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class MySQLAddress:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> MySQLAddress:
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not database:
            raise SettingsError(
                f"DATABASE_URL must look like mysql://user:pass@host:3306/database, got {url!r}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", database):
            raise SettingsError(f"DATABASE_URL's database name may hold only letters, digits and _: {database!r}")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise SettingsError(f"DATABASE_URL has a bad port: {url!r}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    def url(self, database: str | None = None) -> str:
        """The URL again (yoyo wants one), optionally naming another database."""
        credentials = self.user + (f":{self.password}" if self.password else "")
        return f"mysql://{credentials}@{self.host}:{self.port}/{database or self.database}"


def _between(low: float, high: float) -> Meta:
    return Meta(ge=low, le=high)


class Settings(msgspec.Struct, frozen=True, rename="upper", forbid_unknown_fields=False):
    """Every setting, named by its environment variable (the field's name in upper case unless given)."""

    database_url: Annotated[str, Meta(pattern=r"^(mysql|mariadb)://")] = (
        "mysql://root@127.0.0.1:3306/doctor_appointments")
    redis_url: Annotated[str, Meta(pattern=r"^(redis|rediss|unix)://")] = "redis://127.0.0.1:6379/0"
    jwt_secret: str = ""
    app_env: Environment = "development"
    bcrypt_rounds: Annotated[int, _between(4, 31)] = 12
    access_token_minutes: Annotated[int, _between(1, 1440)] = msgspec.field(
        default=30, name="ACCESS_TOKEN_EXPIRE_MINUTES")
    auth_cache_seconds: Annotated[float, _between(0, 300)] = 10.0
    reset_token_minutes: Annotated[int, _between(1, 1440)] = msgspec.field(
        default=30, name="RESET_TOKEN_EXPIRE_MINUTES")
    smtp_url: Annotated[str, Meta(pattern=r"^$|^smtps?://")] = ""
    mail_from: str = "Doctor Appointments <no-reply@clinic.example>"
    db_pool_size: Annotated[int, _between(1, 1000)] = 20
    # The per-doctor Redis lock is the fast path; MySQL's row lock is the guarantee either way.
    booking_redis_lock: bool = True
    booking_lock_ttl_ms: Annotated[int, _between(100, 600_000)] = 10_000
    booking_max_tries: Annotated[int, _between(1, 100)] = 5
    booking_batch_size: Annotated[int, _between(1, 10_000)] = 200
    sweep_after_seconds: Annotated[int, _between(1, 86_400)] = 10
    sweep_every_seconds: Annotated[int, _between(1, 60)] = 5
    worker_poll_delay: Annotated[float, _between(0.001, 5.0)] = 0.005
    worker_max_jobs: Annotated[int, _between(1, 10_000)] = 50
    login_rate_limit_per_minute: Annotated[int, _between(1, 100_000)] = 10
    register_rate_limit_per_minute: Annotated[int, _between(1, 100_000)] = 10
    # bcrypt computations at once in one process: a registration flood must leave logins the CPU to answer.
    password_hash_concurrency: Annotated[int, _between(1, 64)] = 2
    access_log: bool = True
    max_body_bytes: Annotated[int, _between(1024, 10 * 1024 * 1024)] = 64 * 1024

    def __repr__(self) -> str:
        """Every setting but the secrets, which must never reach a log."""
        shown = {name: getattr(self, name) for name in self.__struct_fields__ if name != "jwt_secret"}
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())}, jwt_secret=<hidden>)"

    @property
    def mysql(self) -> MySQLAddress:
        return MySQLAddress.parse(self.database_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise SettingsError naming what is wrong.

        An unset or empty variable takes its default. Numbers and booleans (true/false/1/0) are read from text.
        """
        env = os.environ if environ is None else environ
        given = {name: env[name] for name in ENV_NAMES if env.get(name)}
        try:
            settings = msgspec.convert(given, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(_explain(exc, given)) from None
        settings.mysql  # noqa: B018 - validates DATABASE_URL now rather than at first use
        return msgspec.structs.replace(settings, jwt_secret=_checked_secret(settings))


ENV_NAMES = tuple(field.encode_name for field in msgspec.structs.fields(Settings))


def _explain(exc: msgspec.ValidationError, given: Mapping[str, str]) -> str:
    """msgspec's message ("Expected `int` >= 4 - at `$.BCRYPT_ROUNDS`") as "BCRYPT_ROUNDS must be ..."."""
    message, _, path = str(exc).rpartition(" - at `$.")
    name = path.rstrip("`")
    return f"{name} is invalid ({message[0].lower() + message[1:]}), got {given.get(name)!r}"


def _checked_secret(settings: Settings) -> str:
    secret = settings.jwt_secret
    if len(secret.encode()) >= MIN_SECRET_BYTES:
        return secret
    if settings.app_env == "production":
        raise SettingsError(
            f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes in production; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    if secret:
        raise SettingsError(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
    if settings.app_env == "development":
        log.warning("JWT_SECRET is not set: using a random one, so tokens die with this process")
    return secrets.token_urlsafe(48)
