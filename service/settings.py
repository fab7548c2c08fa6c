"""Settings, read once from the environment and validated with a clear message."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

log = logging.getLogger("service")

N = TypeVar("N", int, float)
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


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "mysql://root@127.0.0.1:3306/doctor_appointments"
    redis_url: str = "redis://127.0.0.1:6379/0"
    jwt_secret: str = ""
    app_env: Environment = "development"
    bcrypt_rounds: int = 12
    access_token_minutes: int = 30
    auth_cache_seconds: float = 10.0
    reset_token_minutes: int = 30
    smtp_url: str = ""
    mail_from: str = "Doctor Appointments <no-reply@clinic.example>"
    db_pool_size: int = 20
    # The per-doctor Redis lock is the fast path; MySQL's row lock is the guarantee either way.
    booking_redis_lock: bool = True
    booking_lock_ttl_ms: int = 10_000
    booking_max_tries: int = 5
    booking_batch_size: int = 200
    sweep_after_seconds: int = 10
    sweep_every_seconds: int = 5
    worker_poll_delay: float = 0.005
    worker_max_jobs: int = 50
    login_rate_limit_per_minute: int = 10
    access_log: bool = True
    max_body_bytes: int = 64 * 1024

    @property
    def mysql(self) -> MySQLAddress:
        return MySQLAddress.parse(self.database_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise SettingsError naming what is wrong."""
        env = os.environ if environ is None else environ
        defaults = cls()
        app_env = env.get("APP_ENV", defaults.app_env)
        if app_env not in ("development", "test", "production"):
            raise SettingsError(f"APP_ENV must be development, test or production, got {app_env!r}")

        jwt_secret = env.get("JWT_SECRET", "")
        if len(jwt_secret.encode()) < MIN_SECRET_BYTES:
            if app_env == "production":
                raise SettingsError(
                    f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes in production; "
                    "make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            if jwt_secret:
                raise SettingsError(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
            jwt_secret = secrets.token_urlsafe(48)
            if app_env == "development":
                log.warning("JWT_SECRET is not set: using a random one, so tokens die with this process")

        settings = cls(
            database_url=env.get("DATABASE_URL", defaults.database_url),
            redis_url=env.get("REDIS_URL", defaults.redis_url),
            jwt_secret=jwt_secret,
            app_env=app_env,  # type: ignore[arg-type]
            bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", defaults.bcrypt_rounds, 4, 31),
            access_token_minutes=_int(env, "ACCESS_TOKEN_EXPIRE_MINUTES", defaults.access_token_minutes, 1, 1440),
            auth_cache_seconds=_float(env, "AUTH_CACHE_SECONDS", defaults.auth_cache_seconds, 0, 300),
            reset_token_minutes=_int(env, "RESET_TOKEN_EXPIRE_MINUTES", defaults.reset_token_minutes, 1, 1440),
            smtp_url=env.get("SMTP_URL", ""),
            mail_from=env.get("MAIL_FROM", defaults.mail_from),
            db_pool_size=_int(env, "DB_POOL_SIZE", defaults.db_pool_size, 1, 1000),
            booking_redis_lock=_bool(env, "BOOKING_REDIS_LOCK", defaults.booking_redis_lock),
            booking_lock_ttl_ms=_int(env, "BOOKING_LOCK_TTL_MS", defaults.booking_lock_ttl_ms, 100, 600_000),
            booking_max_tries=_int(env, "BOOKING_MAX_TRIES", defaults.booking_max_tries, 1, 100),
            booking_batch_size=_int(env, "BOOKING_BATCH_SIZE", defaults.booking_batch_size, 1, 10_000),
            sweep_after_seconds=_int(env, "SWEEP_AFTER_SECONDS", defaults.sweep_after_seconds, 1, 86_400),
            sweep_every_seconds=_int(env, "SWEEP_EVERY_SECONDS", defaults.sweep_every_seconds, 1, 60),
            worker_poll_delay=_float(env, "WORKER_POLL_DELAY", defaults.worker_poll_delay, 0.001, 5.0),
            worker_max_jobs=_int(env, "WORKER_MAX_JOBS", defaults.worker_max_jobs, 1, 10_000),
            login_rate_limit_per_minute=_int(
                env, "LOGIN_RATE_LIMIT_PER_MINUTE", defaults.login_rate_limit_per_minute, 1, 100_000
            ),
            access_log=_bool(env, "ACCESS_LOG", defaults.access_log),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", defaults.max_body_bytes, 1024, 10 * 1024 * 1024),
        )
        settings.mysql  # noqa: B018 - validates DATABASE_URL now rather than at first use
        if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"REDIS_URL must start with redis://, got {settings.redis_url!r}")
        if settings.smtp_url and not settings.smtp_url.startswith(("smtp://", "smtps://")):
            raise SettingsError(f"SMTP_URL must look like smtp://host:port, got {settings.smtp_url!r}")
        return settings


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float, "a number")


def _number(env: Mapping[str, str], name: str, default: N, low: N, high: N, kind: type[N], what: str) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")
