"""Test fixtures: a throwaway database and Redis DB per run, real API and worker processes, and a factory."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pymysql
import pymysql.cursors
import pytest
import redis

from service.core.db import Database, migrate
from service.core.settings import Settings
from tests.factory import Factory
from tests.support import (
    TABLES_CHILD_FIRST,
    PrivateRedis,
    Processes,
    Rig,
    claim_redis_db,
    drop_database,
    release_redis_db,
    started_rig,
)

MYSQL_SERVER = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    database = f"test_appointments_{os.getpid()}"
    redis_db = claim_redis_db(REDIS_SERVER)
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": f"{MYSQL_SERVER}/{database}",
        "REDIS_URL": f"{REDIS_SERVER}/{redis_db}",
        "JWT_SECRET": "test-secret-that-is-long-enough-for-hs256-0123456789",
        "BCRYPT_ROUNDS": "4",
        "SWEEP_AFTER_SECONDS": "2",
        "SWEEP_EVERY_SECONDS": "1",
        "LOGIN_RATE_LIMIT_PER_MINUTE": "10000",
        "REGISTER_RATE_LIMIT_PER_MINUTE": "10000",
        "ACCESS_LOG": "true",  # the workers' job lines, which tests read (the API runs with --no-access-log)
        "AUTH_CACHE_SECONDS": "0",  # exact: a deleted user's token fails on the very next request
    }
    settings = Settings.from_env(env)
    migrate(settings)
    yield env
    drop_database(settings)
    release_redis_db(REDIS_SERVER, redis_db)


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return Settings.from_env(test_env)


@pytest.fixture(scope="session")
def processes(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    procs = Processes(test_env, Path(tmp_path_factory.mktemp("logs")))
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def stack(processes: Processes) -> dict[str, object]:
    """The shared service: two API processes and three workers, as in production but smaller."""
    apis = [processes.start_api(), processes.start_api()]
    workers = [processes.start_worker() for _ in range(3)]
    return {"apis": apis, "workers": workers}


@pytest.fixture(scope="session")
def api_url(stack: dict[str, object]) -> str:
    return stack["apis"][0]  # type: ignore[index]


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    yield database
    await database.close()


@pytest.fixture(scope="session")
def redis_client(test_env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(test_env["REDIS_URL"])


@pytest.fixture(scope="session")
def mysql(settings: Settings) -> Iterator[pymysql.Connection]:
    """A plain connection for cleaning up and for looking at rows directly."""
    address = settings.mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, autocommit=True, cursorclass=pymysql.cursors.DictCursor)
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """Empty every table and the run's Redis DB before each test that talks to the service."""
    if not {"db", "client", "mysql"} & set(request.fixturenames):
        return
    conn: pymysql.Connection = request.getfixturevalue("mysql")
    request.getfixturevalue("redis_client").flushdb()
    for attempt in range(5):  # a worker may still be finishing the previous test's last job
        try:
            with conn.cursor() as cursor:
                for table in TABLES_CHILD_FIRST:
                    cursor.execute(f"DELETE FROM {table}")
            return
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in (1205, 1213) or attempt == 4:
                raise
            time.sleep(0.05)


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        yield http


@pytest.fixture
async def clients(stack: dict[str, object]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client for each of the shared stack's two API processes (for races across processes)."""
    apis: list[str] = stack["apis"]  # type: ignore[assignment]
    async with httpx.AsyncClient(base_url=apis[0], timeout=30) as first, \
            httpx.AsyncClient(base_url=apis[1], timeout=30) as second:
        yield [first, second]


@pytest.fixture
def factory(client: httpx.AsyncClient, settings: Settings) -> Factory:
    return Factory(client, settings)


# --- a rig of a test's own: processes on a database and a Redis no other process uses (tests/support.py Rig) -----

@pytest.fixture(scope="module")
def faults_database(test_env: dict[str, str]) -> Iterator[str]:
    """A database of the module's own on the shared server: the shared stack's workers sweep the run's database,
    and would decide the requests a fault test strands on purpose."""
    url = test_env["DATABASE_URL"] + "_faults"
    settings = Settings.from_env({**test_env, "DATABASE_URL": url})
    migrate(settings)
    yield url
    drop_database(settings)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def rig(processes: Processes, faults_database: str, private_redis: PrivateRedis) -> Iterator[Rig]:
    yield from started_rig(processes, faults_database, private_redis.url)
