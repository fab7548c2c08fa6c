"""Settings, read once from the environment at startup and validated with a message naming the variable."""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import quote, unquote, urlsplit

import msgspec
from msgspec import Meta

log = logging.getLogger("service")

Environment = Literal["development", "test", "production"]
MIN_SECRET_BYTES = 32
MAKE_A_SECRET = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
# Words of the placeholders people paste from examples ("change-me", "your-secret-here", ...). Six letters and more:
# a random secret holds one by chance about once in ten million.
PLACEHOLDER_WORDS = ("changeme", "secret", "password", "example", "placeholder", "replace")
MIN_SECRET_VARIETY = 8  # different characters; 32 random hex digits hold fewer about once in ten million


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def redacted(text: str) -> str:
    """`text` with the password of a URL in it (scheme://user:password@host) replaced by ***, for logs and errors."""
    scheme, separator, rest = text.partition("://")
    credentials, at, place = rest.rpartition("@")  # the last @: a password may hold an unescaped one
    user, colon, _ = credentials.partition(":")
    if not (separator and at and colon):
        return text
    return f"{scheme}://{user}:***@{place}"


@dataclass(frozen=True, slots=True)
class MySQLAddress:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    @classmethod
    def parse(cls, url: str) -> MySQLAddress:
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not database:
            raise SettingsError(
                f"DATABASE_URL must look like mysql://user:pass@host:3306/database, got {redacted(url)!r}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", database):
            raise SettingsError(f"DATABASE_URL's database name may hold only letters, digits and _: {database!r}")
        try:
            port = parts.port or 3306
        except ValueError:
            raise SettingsError(f"DATABASE_URL has a bad port: {redacted(url)!r}") from None
        return cls(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    def url(self, database: str | None = None) -> str:
        """The URL again (yoyo wants one), optionally naming another database."""
        credentials = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
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
    auth_cache_seconds: Annotated[float, _between(0, 300)] = 30.0
    reset_token_minutes: Annotated[int, _between(1, 1440)] = msgspec.field(
        default=30, name="RESET_TOKEN_EXPIRE_MINUTES")
    smtp_url: Annotated[str, Meta(pattern=r"^$|^smtps?://")] = ""
    mail_from: str = "Doctor Appointments <no-reply@clinic.example>"
    db_pool_size: Annotated[int, _between(1, 1000)] = 20
    redis_pool_size: Annotated[int, _between(2, 1000)] = 20  # the API's; its pub/sub listener keeps one
    # The per-doctor Redis lock is the fast path; MySQL's row lock is the guarantee either way.
    booking_redis_lock: bool = True
    booking_lock_ttl_ms: Annotated[int, _between(100, 600_000)] = 10_000
    booking_max_tries: Annotated[int, _between(1, 100)] = 5
    booking_batch_size: Annotated[int, _between(1, 10_000)] = 200
    # A booking of a time the API process heard the worker give away within this many seconds is refused at once
    # (409 slot_taken) instead of being stored and decided (api/schedule_cache.py's KnownTaken); 0: never.
    known_taken_seconds: Annotated[float, _between(0, 60)] = 5.0
    # How long before its start a patient may still cancel or move an appointment (a type may set its own).
    cancel_notice_minutes: Annotated[int, _between(0, 525_600)] = 0
    # A slot hold's lifetime, and how many live holds a patient may have at once (holds.py).
    hold_seconds: Annotated[int, _between(1, 86_400)] = 300
    holds_per_patient: Annotated[int, _between(1, 100)] = 3
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
    # Web origins whose pages may call the API from a browser, comma-separated; empty: no CORS headers at all.
    cors_allow_origins: str = ""
    # text or json log lines; empty: json in production, text elsewhere (see json_logs).
    log_format: Literal["", "text", "json"] = ""
    # If set, GET /metrics wants `Authorization: Bearer <it>`; production serves /metrics only when it is set.
    metrics_token: str = ""
    # Notifications (core/outbox.py): the waits before each retry of a failed delivery (webhook or email), in seconds,
    # comma-separated; after the last one the delivery is failed. The default spans about a day.
    delivery_retry_seconds: str = "5,30,300,1800,7200,18000,36000,36000"
    webhook_connect_timeout_seconds: Annotated[float, _between(0.05, 30)] = 3.0
    webhook_read_timeout_seconds: Annotated[float, _between(0.05, 60)] = 10.0
    # Webhooks to loopback, private, link-local or metadata addresses are refused unless this is true (development).
    webhook_allow_private_networks: bool = False
    # Reminders before an appointment's start, in minutes, comma-separated (fractions allowed, for tests).
    reminder_offsets_minutes: str = "1440,120"

    def __repr__(self) -> str:
        """Every setting but the secrets, which must never reach a log: the JWT secret, the metrics token and the
        URLs' passwords."""
        shown = {name: getattr(self, name) for name in self.__struct_fields__ if name not in SECRETS}
        return "Settings({}, jwt_secret=<hidden>, metrics_token=<hidden>)".format(", ".join(
            f"{name}={(redacted(value) if isinstance(value, str) else value)!r}" for name, value in shown.items()))

    @property
    def mysql(self) -> MySQLAddress:
        return MySQLAddress.parse(self.database_url)

    @property
    def json_logs(self) -> bool:
        """JSON lines unless LOG_FORMAT says text; by default only in production, where logs are shipped and parsed."""
        return self.log_format == "json" or (not self.log_format and self.app_env == "production")

    @property
    def metrics_enabled(self) -> bool:
        """GET /metrics is served: always outside production, and in production only behind METRICS_TOKEN."""
        return self.app_env != "production" or bool(self.metrics_token)

    @property
    def retry_delays(self) -> list[float]:
        """DELIVERY_RETRY_SECONDS as numbers: the wait before retry 1, 2, ..."""
        return _numbers("DELIVERY_RETRY_SECONDS", self.delivery_retry_seconds, allow_empty=True)

    @property
    def reminder_offsets(self) -> list[int]:
        """REMINDER_OFFSETS_MINUTES in whole seconds, largest first, without repeats."""
        minutes = _numbers("REMINDER_OFFSETS_MINUTES", self.reminder_offsets_minutes, allow_empty=True)
        return sorted({max(1, round(m * 60)) for m in minutes}, reverse=True)

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",")] if self.cors_allow_origins else []

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
        _check_origins(settings.cors_origins)
        settings.retry_delays, settings.reminder_offsets  # noqa: B018 - validated now rather than at first use
        if settings.app_env == "production":
            _check_production(settings)
        return msgspec.structs.replace(settings, jwt_secret=_checked_secret(settings))


ENV_NAMES = tuple(field.encode_name for field in msgspec.structs.fields(Settings))
SECRETS = ("jwt_secret", "metrics_token")  # never printed


def _explain(exc: msgspec.ValidationError, given: Mapping[str, str]) -> str:
    """msgspec's message ("Expected `int` >= 4 - at `$.BCRYPT_ROUNDS`") as "BCRYPT_ROUNDS must be ..."."""
    message, _, path = str(exc).rpartition(" - at `$.")
    name = path.rstrip("`")
    return f"{name} is invalid ({message[0].lower() + message[1:]}), got {redacted(given.get(name, ''))!r}"


def _numbers(name: str, text: str, *, allow_empty: bool = False) -> list[float]:
    """A comma-separated list of non-negative numbers (at most a year each), or a SettingsError naming `name`."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = [-1.0]
    if any(not 0 <= n <= 366 * 86_400 for n in numbers) or (not numbers and not allow_empty):
        raise SettingsError(f"{name} must be comma-separated non-negative numbers, got {text!r}")
    return numbers


def _check_origins(origins: list[str]) -> None:
    """Each origin exactly as a browser sends it (scheme://host[:port]): one with a path or a trailing slash would
    never match, and `*` would let every site's pages call the API."""
    for origin in origins:
        if not re.fullmatch(r"https?://[^\s/:,]+(:\d{1,5})?", origin):
            raise SettingsError(
                f"CORS_ALLOW_ORIGINS takes origins like https://app.clinic.example or http://localhost:3000, "
                f"comma-separated, without a path or a trailing slash; got {origin!r}"
            )


def _check_production(settings: Settings) -> None:
    """What production must not run with: a guessable JWT secret, mail to the log, a database without a password."""
    _check_secret_is_random("JWT_SECRET", settings.jwt_secret, "anyone holding it can sign a token for any user")
    if settings.metrics_token:
        _check_secret_is_random("METRICS_TOKEN", settings.metrics_token, "anyone could read the metrics")
    if not settings.smtp_url:
        raise SettingsError("SMTP_URL must be set in production: without it the worker writes every email, "
                            "password-reset tokens included, to its log")
    mysql = settings.mysql
    if not mysql.password:
        raise SettingsError(f"DATABASE_URL names MySQL user {mysql.user!r} without a password; production needs one")
    if mysql.user == "root":
        log.warning("DATABASE_URL connects as root: the service needs only its own database; give it a user of its "
                    "own (see SECURITY.md)")
    if settings.redis_url.startswith("redis") and urlsplit(settings.redis_url).password is None:
        log.warning("REDIS_URL has no password: anyone who reaches Redis can read and change the queue and the "
                    "rate limits (see SECURITY.md)")


def _check_secret_is_random(name: str, secret: str, else_: str) -> None:
    """Refuse a secret (JWT_SECRET, METRICS_TOKEN) that anyone could guess: one short enough to search, or made of
    an example's words or a pattern. `else_` says what guessing it would give away."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{name} must be set to at least {MIN_SECRET_BYTES} bytes in production ({else_}); "
                            + MAKE_A_SECRET)
    letters = re.sub(r"[^a-z0-9]", "", secret.lower())
    if any(word in letters for word in PLACEHOLDER_WORDS) or len(set(secret)) < MIN_SECRET_VARIETY or _repeats(secret):
        raise SettingsError(f"{name} looks made up (an example's words, too few different characters, or a "
                            f"repeated piece) and anyone could guess it ({else_}); " + MAKE_A_SECRET)


def _repeats(text: str) -> bool:
    """Whether `text` is its first few characters over and over ("0123456789012345...")."""
    return any(text == (text[:size] * (len(text) // size + 1))[:len(text)] for size in range(1, len(text) // 2 + 1))


def _checked_secret(settings: Settings) -> str:
    secret = settings.jwt_secret
    if len(secret.encode()) >= MIN_SECRET_BYTES:
        return secret
    if secret:
        raise SettingsError(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes; " + MAKE_A_SECRET)
    if settings.app_env == "development":
        log.warning("JWT_SECRET is not set: using a random one, so tokens die with this process")
    return secrets.token_urlsafe(48)
