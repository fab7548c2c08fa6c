"""Settings, migrations, health, OpenAPI and the problem+json shape."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import yaml
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.testing import AsyncTestClient
from yoyo import read_migrations

from scripts.docker_secrets import with_secrets
from service.api.app import create_app
from service.api.extensions import resolve_dependencies_in_turn
from service.core.db import (
    ER_DUP_ENTRY,
    MIGRATIONS_DIR,
    QUERIES,
    Connection,
    Database,
    check_any_of,
    expand_any,
    load_queries,
    migrate,
    mysql_error_code,
)
from service.core.settings import MySQLAddress, Settings, SettingsError
from service.core.times import utcnow
from tests.support import Processes

TABLES = {"users", "availabilities", "booking_requests", "appointments", "password_reset_tokens", "weekly_hours",
          "time_off", "appointment_types", "appointment_history", "schedule_changes", "outbox_events", "deliveries",
          "webhooks", "reminders", "calendar_feeds", "holds", "waitlist_entries"}


# --- settings -------------------------------------------------------------------------------------------------

def test_settings_defaults_in_development_make_a_random_secret() -> None:
    settings = Settings.from_env({})
    assert settings.app_env == "development"
    assert settings.database_url == "mysql://root@127.0.0.1:3306/doctor_appointments"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert len(settings.jwt_secret) >= 32
    assert Settings.from_env({}).jwt_secret != settings.jwt_secret


@pytest.mark.parametrize("secret", [None, "", "too-short"])
def test_production_refuses_a_missing_or_short_secret(secret: str | None) -> None:
    env = {"APP_ENV": "production"} | ({"JWT_SECRET": secret} if secret is not None else {})
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env(env)


PRODUCTION = {"APP_ENV": "production", "DATABASE_URL": "mysql://appointments:db-pass-4711@db:3306/clinic",
              "REDIS_URL": "redis://:redis-pass-4711@cache:6379/0", "SMTP_URL": "smtp://mail.clinic.example:587"}


@pytest.mark.parametrize("secret", [secrets.token_urlsafe(48), secrets.token_hex(32), secrets.token_urlsafe(24)],
                         ids=["urlsafe-48", "hex-32", "urlsafe-24"])
def test_production_accepts_a_random_secret(secret: str) -> None:
    settings = Settings.from_env(PRODUCTION | {"JWT_SECRET": secret})
    assert settings.jwt_secret == secret


@pytest.mark.parametrize("secret", [
    "change-me-to-a-long-random-secret-of-32-bytes-or-more",  # docker-compose.yml's default until it had none
    "test-secret-that-is-long-enough-for-hs256-0123456789",  # the test suite's, published in tests/conftest.py
    "CHANGE_ME_PLEASE_0123456789abcdefghijklmnop",
    "changeme-changeme-changeme-changeme",
    "my-super-secret-jwt-signing-key-for-production",
    "your-jwt-signing-key-goes-here-please-replace",
    "replace-with-the-output-of-token-urlsafe-48",
    "s" * 64,
    "abababababababababababababababab",
    "0123456789" * 4,
])
def test_production_refuses_published_and_guessable_secrets(secret: str) -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET") as refused:
        Settings.from_env(PRODUCTION | {"JWT_SECRET": secret})
    assert secret not in str(refused.value)
    assert "secrets.token_urlsafe" in str(refused.value)  # says how to make a good one


def test_development_and_tests_may_use_a_made_up_secret() -> None:
    for app_env in ("development", "test"):
        assert Settings.from_env({"APP_ENV": app_env, "JWT_SECRET": "s" * 32}).jwt_secret == "s" * 32


def test_production_refuses_to_send_reset_tokens_to_the_log() -> None:
    """Without SMTP_URL the worker writes each email, reset token included, to its log."""
    with pytest.raises(SettingsError, match="SMTP_URL"):
        Settings.from_env(PRODUCTION | {"JWT_SECRET": secrets.token_urlsafe(48), "SMTP_URL": ""})


def test_production_refuses_a_database_account_without_a_password() -> None:
    env = PRODUCTION | {"JWT_SECRET": secrets.token_urlsafe(48), "DATABASE_URL": "mysql://app@db:3306/clinic"}
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env(env)


@pytest.mark.parametrize(("changes", "named"), [
    ({"DATABASE_URL": "mysql://root:db-pass-4711@db:3306/clinic"}, "DATABASE_URL"),
    ({"REDIS_URL": "redis://cache:6379/0"}, "REDIS_URL"),
])
def test_production_warns_of_root_and_of_redis_without_a_password(
    changes: dict[str, str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service"):
        Settings.from_env(PRODUCTION | {"JWT_SECRET": secrets.token_urlsafe(48)})
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="service"):
        Settings.from_env(PRODUCTION | {"JWT_SECRET": secrets.token_urlsafe(48)} | changes)
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert named in caplog.text


def test_no_password_or_secret_reaches_a_repr() -> None:
    jwt_secret = secrets.token_urlsafe(48)
    settings = Settings.from_env({
        "JWT_SECRET": jwt_secret, "DATABASE_URL": "mysql://app:db-pass-4711@db:3306/clinic",
        "REDIS_URL": "redis://:redis-pass-4711@cache:6379/0", "SMTP_URL": "smtp://mailer:smtp-pass-4711@mail:587",
        "METRICS_TOKEN": "metrics-token-4711",
    })
    shown = repr(settings) + repr(settings.mysql) + str(settings.mysql)
    for hidden in (jwt_secret, "db-pass-4711", "redis-pass-4711", "smtp-pass-4711", "metrics-token-4711"):
        assert hidden not in shown
    assert "mysql://app:***@db:3306/clinic" in shown  # still says which account and server


@pytest.mark.parametrize(("env", "named"), [
    ({"DATABASE_URL": "postgres://app:db-pass-4711@db/clinic"}, "DATABASE_URL"),
    ({"DATABASE_URL": "mysql://app:db-pass-4711@db:99999/clinic"}, "DATABASE_URL"),
    ({"DATABASE_URL": "mysql://app:db-pass-4711@db:3306/bad-name"}, "DATABASE_URL"),
    ({"DATABASE_URL": "mysql://app:db-pass-4711@db:3306/"}, "DATABASE_URL"),
    ({"REDIS_URL": "http://:db-pass-4711@cache:6379/0"}, "REDIS_URL"),
    ({"SMTP_URL": "smtpx://mailer:db-pass-4711@mail:587"}, "SMTP_URL"),
])
def test_no_password_reaches_an_error_message(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as refused:
        Settings.from_env(env)
    assert "db-pass-4711" not in str(refused.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_ENV": "staging"}, "APP_ENV"),
        ({"DATABASE_URL": "postgres://x@y/z"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://root@host:3306/"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://root@host:3306/bad-name;drop"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"BCRYPT_ROUNDS": "twelve"}, "BCRYPT_ROUNDS"),
        ({"BCRYPT_ROUNDS": "3"}, "BCRYPT_ROUNDS"),
        ({"BOOKING_REDIS_LOCK": "maybe"}, "BOOKING_REDIS_LOCK"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_database_url_is_parsed() -> None:
    address = Settings.from_env({"DATABASE_URL": "mysql://app:p%40ss@db.internal:3307/clinic"}).mysql
    assert (address.host, address.port, address.user, address.password, address.database) == (
        "db.internal", 3307, "app", "p@ss", "clinic")


def test_a_database_url_with_reserved_characters_survives_the_round_trip() -> None:
    """migrate() hands yoyo the URL again: a password holding @, : or / must come back as it went in."""
    address = Settings.from_env({"DATABASE_URL": "mysql://app%3A1:p%40s%3As%2F@db.internal:3307/clinic"}).mysql
    assert (address.user, address.password) == ("app:1", "p@s:s/")
    assert MySQLAddress.parse(address.url()) == address
    assert MySQLAddress.parse(address.url("other")).database == "other"


@pytest.mark.parametrize(("given", "origins"), [
    ("", []),
    ("https://app.clinic.example", ["https://app.clinic.example"]),
    (" https://app.clinic.example , http://localhost:3000 ", ["https://app.clinic.example", "http://localhost:3000"]),
])
def test_cors_origins_are_read_from_a_comma_separated_list(given: str, origins: list[str]) -> None:
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": given}).cors_origins == origins


@pytest.mark.parametrize("given", ["*", "https://app.clinic.example/", "app.clinic.example",
                                   "https://app.clinic.example/path", "https://a.example,,https://b.example"])
def test_cors_origins_that_would_never_match_or_match_everyone_are_refused(given: str) -> None:
    with pytest.raises(SettingsError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env({"CORS_ALLOW_ORIGINS": given})


def test_every_named_query_is_loaded_once() -> None:
    assert load_queries() == QUERIES
    assert {"lock_doctor", "insert_booking_request", "ping"} <= QUERIES.keys()
    assert all(sql and not sql.endswith(";") for sql in QUERIES.values())


# --- docker-compose.yml ---------------------------------------------------------------------------------------

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
APP_SERVICES = ("migrate", "api", "worker")
COMPOSE_SECRETS = {"JWT_SECRET": secrets.token_urlsafe(48), "MYSQL_PASSWORD": secrets.token_urlsafe(24),
                   "REDIS_PASSWORD": secrets.token_urlsafe(24)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def required(variable: str) -> str:
    """How compose spells a variable that must be set: no default, a message if it is missing."""
    return "${" + variable + ":?"


def test_compose_has_no_default_secret_and_runs_production(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["JWT_SECRET"].startswith(required("JWT_SECRET")), env["JWT_SECRET"]
        assert env["APP_ENV"] == "${APP_ENV:-production}"
        assert env["SMTP_URL"], "production refuses an empty SMTP_URL"


def test_compose_publishes_mysql_redis_and_mailpit_on_the_loopback_only(compose: dict[str, Any]) -> None:
    for name in ("mysql", "redis", "mailpit"):
        for port in compose["services"][name].get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_mysql_has_no_default_password_and_the_service_does_not_use_root(compose: dict[str, Any]) -> None:
    mysql = compose["services"]["mysql"]["environment"]
    assert mysql["MYSQL_PASSWORD"].startswith(required("MYSQL_PASSWORD"))
    assert mysql["MYSQL_RANDOM_ROOT_PASSWORD"] == "yes" and "MYSQL_ROOT_PASSWORD" not in mysql
    database_url = compose["services"]["api"]["environment"]["DATABASE_URL"]
    assert database_url.startswith("mysql://${MYSQL_USER:-appointments}:${MYSQL_PASSWORD}@mysql:3306/")


def test_compose_redis_requires_a_password_which_the_service_and_the_healthcheck_use(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith(required("REDIS_PASSWORD"))
    assert '--requirepass "$$REDIS_PASSWORD"' in " ".join(redis["command"])
    assert "$$REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    for name in APP_SERVICES:
        assert compose["services"][name]["environment"]["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"


def compose_config(env: dict[str, str], tmp_path: Path, env_file: str = "") -> subprocess.CompletedProcess[str]:
    """`docker compose config` (or docker-compose's) with `env_file` as its .env and `env` around it."""
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif subprocess.run("docker compose version", shell=True, capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.fail("neither docker compose nor docker-compose is installed: apt-get install docker-compose")
    (tmp_path / "compose.env").write_text(env_file)
    kept = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG")}
    return subprocess.run([*command, "--env-file", str(tmp_path / "compose.env"), "-f", str(COMPOSE_FILE), "config"],
                          env=kept | env, capture_output=True, text=True, cwd=tmp_path, timeout=60)


def api_environment(config: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert config.returncode == 0, config.stderr
    environment = yaml.safe_load(config.stdout)["services"]["api"]["environment"]
    return {name: str(value) for name, value in environment.items()}


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_each_secret_and_says_how_to_make_one(
    missing: str, tmp_path: Path
) -> None:
    result = compose_config({name: value for name, value in COMPOSE_SECRETS.items() if name != missing}, tmp_path)
    assert result.returncode != 0
    assert f"{missing} is not set - run make docker-secrets" in result.stderr, result.stderr


def test_compose_with_the_secrets_gives_production_settings_the_service_accepts(tmp_path: Path) -> None:
    api_env = api_environment(compose_config(COMPOSE_SECRETS, tmp_path))
    assert api_env["JWT_SECRET"] == COMPOSE_SECRETS["JWT_SECRET"]
    assert api_env["APP_ENV"] == "production"
    settings = Settings.from_env(api_env)
    assert settings.mysql.password == COMPOSE_SECRETS["MYSQL_PASSWORD"]
    assert settings.redis_url == f"redis://:{COMPOSE_SECRETS['REDIS_PASSWORD']}@redis:6379/0"


def test_env_example_refused_by_compose_until_make_docker_secrets_fills_it_in(tmp_path: Path) -> None:
    """A newcomer's `cp .env.example .env`: compose refuses it; after `make docker-secrets`, it runs production."""
    example = (COMPOSE_FILE.parent / ".env.example").read_text()
    assert compose_config({}, tmp_path, example).returncode != 0
    lines, made = with_secrets(example.splitlines())
    assert sorted(made) == sorted(COMPOSE_SECRETS)
    settings = Settings.from_env(api_environment(compose_config({}, tmp_path, "\n".join(lines))))
    assert settings.app_env == "production"
    assert with_secrets(lines) == (lines, [])  # run again, it changes nothing


# --- migrations -----------------------------------------------------------------------------------------------

def _tables(settings: Settings) -> set[str]:
    address = settings.mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database)
    with conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        names = {row[0] for row in cursor.fetchall()}
    conn.close()
    return names - {"_yoyo_log", "_yoyo_migration", "_yoyo_version", "yoyo_lock"}


def test_migrations_create_the_database_apply_twice_harmlessly_and_roll_back(settings: Settings) -> None:
    scratch = Settings.from_env({"DATABASE_URL": settings.mysql.url(f"test_migrations_{os.getpid()}")})
    every = len(read_migrations(str(MIGRATIONS_DIR)))  # SQL ones and Python ones (0007: MySQL has no NFKC)
    try:
        assert len(migrate(scratch)) == every
        assert _tables(scratch) == TABLES
        assert migrate(scratch) == []
        assert len(migrate(scratch, rollback_all=True)) == every
        assert _tables(scratch) == set()
        assert len(migrate(scratch)) == every
    finally:
        address = scratch.mysql
        conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password)
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{address.database}`")
        conn.close()


# --- health ---------------------------------------------------------------------------------------------------

def user_row(email: str) -> dict[str, Any]:
    return {"email": email, "name": "Db Test", "role": "Patient", "specialty": None, "timezone": "UTC",
            "password_hash": "x", "created_at": utcnow()}


def emails_like(mysql: pymysql.Connection, prefix: str) -> list[str]:
    with mysql.cursor() as cursor:
        cursor.execute("SELECT email FROM users WHERE email LIKE %s ORDER BY id", (prefix + "%",))
        return [row["email"] for row in cursor.fetchall()]


async def test_a_transactions_begin_goes_with_its_first_statement_and_a_failed_batch_undoes_it_all(
    db: Database, mysql: pymysql.Connection,
) -> None:
    """BEGIN travels with the first statement (Connection._run), yet the transaction is real: nothing is seen
    outside before the commit; a batch whose second write fails rolls back the whole transaction."""
    tag = f"tx-{secrets.token_hex(4)}-"
    async with db.transaction() as tx:
        await tx.execute("insert_user", user_row(tag + "a@example.com"))
        assert emails_like(mysql, tag) == []  # not committed yet: not autocommitted either
    assert emails_like(mysql, tag) == [tag + "a@example.com"]

    with pytest.raises(Exception) as raised:
        async with db.transaction() as tx:
            await tx.execute("insert_user", user_row(tag + "b@example.com"))
            writes = tx.batch()
            await writes.execute("insert_user", user_row(tag + "c@example.com"))
            await writes.execute("insert_user", user_row(tag + "a@example.com"))  # taken: the batch fails here
            await writes.execute("insert_user", user_row(tag + "d@example.com"))
            await writes.send()
    assert mysql_error_code(raised.value) == ER_DUP_ENTRY
    assert emails_like(mysql, tag) == [tag + "a@example.com"]
    async with db.connection() as conn:  # the pooled connection is clean for its next user
        assert (await conn.fetch_one("find_user_by_email", {"email": tag + "a@example.com"}))["name"] == "Db Test"


async def test_batched_statements_escape_every_value_and_answer_in_order(
    db: Database, mysql: pymysql.Connection,
) -> None:
    """Several statements go in one round trip (MULTI_STATEMENTS), each value escaped by the driver: a value that
    looks like another statement is stored as it is, and adds none."""
    tag = f"esc-{secrets.token_hex(4)}-"
    sneaky = tag + "x'); DELETE FROM users; -- \\'@example.com"
    async with db.transaction() as tx:
        writes = tx.batch()
        await writes.execute_many("insert_user", [user_row(sneaky), user_row(tag + "plain@example.com")])
        await writes.send()
        first, second = await tx.fetch_batch([
            ("find_user_by_email", {"email": sneaky}), ("find_user_by_email", {"email": tag + "plain@example.com"})])
    assert [row["email"] for row in first + second] == [sneaky, tag + "plain@example.com"]
    assert emails_like(mysql, tag) == [sneaky, tag + "plain@example.com"]


def test_an_any_condition_is_one_escaped_term_an_item_joined_by_or(mysql: pymysql.Connection) -> None:
    """{any NAME: …} (the decision's one statement for every range of a group): a term an item, each with its own
    parameters escaped (a "%" or a quote in a value included), OR between them, nothing matched by an empty list."""
    sql = ("SELECT %(label)s AS label, {any items: %(text)s = %(same)s} AS matched, "
           "{any none: %(text)s = %(text)s} AS matched_by_none")
    items = [{"text": "50% off", "same": "50% off"}, {"text": "it's", "same": "its"}]
    with mysql.cursor() as cursor:
        text = expand_any(cursor, sql, {"label": "100%", "items": items, "none": []})
        assert text.count(" OR ") == 1 and "FALSE" in text
        cursor.execute(text)
        assert cursor.fetchone() == {"label": "100%", "matched": 1, "matched_by_none": 0}
        cursor.execute(expand_any(cursor, sql, {"label": "x", "items": items[1:], "none": []}))
        assert cursor.fetchone()["matched"] == 0


@pytest.mark.parametrize("sql", [
    "SELECT 1 WHERE {any items: %(a)s = '}'}",  # the first "}" would end the condition
    "SELECT %(items_0_a)s WHERE {any items: %(a)s = 1}",  # the query's own parameter named as an item's
    "SELECT 1 WHERE {any items: %(a)s = 1} AND {b}",
])
def test_a_query_whose_any_condition_would_expand_wrongly_is_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="query 'q'"):
        check_any_of("q", sql)


async def test_a_batch_folds_the_rows_of_an_insert_into_one_statement(db: Database, mysql: pymysql.Connection) -> None:
    """A batch's execute_many of an INSERT … VALUES is one multi-row statement (MySQL parses and runs one, not one
    a row), in its place among the others; of any other statement, one a row; of no rows, nothing."""
    tag = f"fold-{secrets.token_hex(4)}-"

    async def statements(tx: Connection) -> tuple[int, int]:
        async with tx.raw.cursor() as cursor:
            await cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_insert', 'Com_update')")
            counts = dict(await cursor.fetchall())
        return int(counts["Com_insert"]), int(counts["Com_update"])

    async with db.transaction() as tx:
        before = await statements(tx)
        writes = tx.batch()
        await writes.execute("insert_user", user_row(tag + "0@example.com"))
        await writes.execute_many("insert_user", [user_row(f"{tag}{i}@example.com") for i in (1, 2, 3)])
        await writes.execute_many("insert_user", [])
        await writes.execute_many("mark_hold_confirmed", [{"id": 0, "appointment_id": 0, "now": utcnow()}] * 2)
        await writes.send()
        after = await statements(tx)
        assert (after[0] - before[0], after[1] - before[1]) == (2, 2)
    assert emails_like(mysql, tag) == [f"{tag}{i}@example.com" for i in range(4)]


async def test_a_connection_lost_while_being_made_is_cant_connect_not_a_crash(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncmy can raise RuntimeError when the server goes away in the middle of a new connection's handshake (seen
    in test_mysql_restarted_under_load as a 500): it is MySQL being out of reach (2003, a 503), while a RuntimeError
    of the caller's own passes through as it is."""

    def server_gone_mid_connect() -> object:
        raise RuntimeError("Transport does not expose socket instance")

    with pytest.raises(RuntimeError, match="mine"):  # the caller's own, raised with a connection in hand
        async with db.connection():
            raise RuntimeError("mine")
    monkeypatch.setattr(db.pool, "acquire", server_gone_mid_connect)  # the fault, injected
    with pytest.raises(Exception) as raised:
        await db.fetch_one("find_user_by_email", {"email": "nobody@example.com"})
    assert mysql_error_code(raised.value) == 2003
    with pytest.raises(Exception) as raised:
        async with db.transaction():
            pass
    assert mysql_error_code(raised.value) == 2003


async def test_health_is_ok_when_mysql_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mysql": "ok", "redis": "ok"}


def test_health_names_redis_when_it_does_not_answer(processes: Processes) -> None:
    url = processes.start_api({"REDIS_URL": "redis://127.0.0.1:1/0"})
    response = httpx.get(f"{url}/health", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "mysql": "ok", "redis": "unavailable"}


def test_health_names_mysql_when_it_does_not_answer(processes: Processes, test_env: dict[str, str]) -> None:
    url = processes.start_api({"DATABASE_URL": "mysql://root@127.0.0.1:1/nowhere"})
    response = httpx.get(f"{url}/health", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "mysql": "unavailable", "redis": "ok"}


# --- OpenAPI --------------------------------------------------------------------------------------------------

async def test_openapi_document_and_viewers_are_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    assert spec["info"]["title"] == "Doctor Appointments API"
    assert spec["info"]["version"] == "1.0.0"
    assert {tag["name"] for tag in spec["tags"]} >= {"accounts", "doctors", "appointments", "booking requests"}
    assert any(s.get("scheme") == "Bearer" or s.get("type") == "http"
               for s in spec["components"]["securitySchemes"].values())
    operation_ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert {"register", "login", "bookAppointment", "getBookingRequest", "getDoctorSlots"} <= set(operation_ids)
    for page in ("/schema/swagger", "/schema/redoc"):
        response = await client.get(page)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]


# --- problem+json ---------------------------------------------------------------------------------------------

async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 404 and body["title"] and body["type"] and body["detail"]


async def test_validation_errors_name_the_failing_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/register", json={"email": "a@b.co", "name": "A", "role": "Nurse",
                                                          "password": "password1"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 400
    assert [e["field"] for e in body["errors"]] == ["role"]


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/login", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.put("/health")
    assert response.status_code == 405
    assert response.json()["status"] == 405


async def test_dependencies_of_one_level_are_resolved_in_the_handlers_own_task() -> None:
    """Litestar would start a task per dependency (service/dependencies.py): ours run in the request's task,
    one after another, and still arrive in the handler."""
    seen: dict[str, asyncio.Task | None] = {}

    def first() -> int:
        seen["first"] = asyncio.current_task()
        return 1

    async def second() -> int:
        seen["second"] = asyncio.current_task()
        return 2

    @get("/both")
    async def both(one: NamedDependency[int], two: NamedDependency[int]) -> dict[str, int]:
        seen["handler"] = asyncio.current_task()
        return {"sum": one + two}

    resolve_dependencies_in_turn()
    app = Litestar([both], dependencies={"one": Provide(first, sync_to_thread=False), "two": Provide(second)})
    async with AsyncTestClient(app) as http:
        response = await http.get("/both")
    assert response.json() == {"sum": 3}
    assert seen["first"] is seen["second"] is seen["handler"] is not None


def test_the_app_is_built_without_deprecated_litestar_styles(settings: Settings) -> None:
    """Litestar 2.25 warns of the styles 3.0 drops (inferred dependencies, Parameter(query=/header=)): none here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        app = create_app(settings)
    assert app.openapi_schema.paths
