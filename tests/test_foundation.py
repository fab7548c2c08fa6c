"""Settings, migrations, health, OpenAPI and the problem+json shape."""

from __future__ import annotations

import asyncio
import os
import warnings

import httpx
import pymysql
import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.testing import AsyncTestClient
from yoyo import read_migrations

from service.api.app import create_app
from service.api.extensions import resolve_dependencies_in_turn
from service.core.db import MIGRATIONS_DIR, QUERIES, load_queries, migrate
from service.core.settings import Settings, SettingsError
from tests.support import Processes

TABLES = {"users", "availabilities", "booking_requests", "appointments", "password_reset_tokens"}


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


def test_production_accepts_a_long_secret() -> None:
    settings = Settings.from_env({"APP_ENV": "production", "JWT_SECRET": "s" * 32})
    assert settings.jwt_secret == "s" * 32


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


def test_every_named_query_is_loaded_once() -> None:
    assert load_queries() == QUERIES
    assert {"lock_doctor", "insert_booking_request", "ping"} <= QUERIES.keys()
    assert all(sql and not sql.endswith(";") for sql in QUERIES.values())


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
