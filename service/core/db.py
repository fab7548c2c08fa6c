"""MySQL access: the asyncmy pool, named queries from sql/, and the one transaction helper."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncmy
from asyncmy.cursors import DictCursor

from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = ROOT / "migrations"

# MySQL error numbers the code reacts to.
ER_DUP_ENTRY = 1062
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
RETRYABLE_ERRORS = frozenset({ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK})
# Can't connect, server gone away, connection lost mid-query.
CONNECTION_LOST_ERRORS = frozenset({2003, 2006, 2013})
# The server is out of reach for now: connection lost, or too many connections.
UNAVAILABLE_ERRORS = CONNECTION_LOST_ERRORS | {1040}

Row = dict[str, Any]


def load_queries(directory: Path = SQL_DIR) -> dict[str, str]:
    """Read every `-- name: x` block of every .sql file into {name: sql}."""
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        blocks = re.split(r"^--\s*name:\s*(\w+)\s*$", path.read_text(), flags=re.MULTILINE)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (again in {path.name})")
            lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
            queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES = load_queries()


def mysql_error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver exception, if it carries one."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class Connection:
    """One pooled connection; runs named queries with named parameters."""

    __slots__ = ("_after_commit", "raw")

    def __init__(self, raw: asyncmy.Connection) -> None:
        self.raw = raw
        self._after_commit: list[Callable[[], Awaitable[None]]] = []

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` once this transaction has committed; never if it rolls back."""
        self._after_commit.append(callback)

    async def fetch_one(self, query: str, params: Mapping[str, Any] | None = None) -> Row | None:
        async with self.raw.cursor(DictCursor) as cursor:
            await cursor.execute(QUERIES[query], params)
            return await cursor.fetchone()

    async def fetch_all(self, query: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self.raw.cursor(DictCursor) as cursor:
            await cursor.execute(QUERIES[query], params)
            return list(await cursor.fetchall())

    async def fetch_value(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        async with self.raw.cursor() as cursor:
            await cursor.execute(QUERIES[query], params)
            row = await cursor.fetchone()
            return row[0] if row else None

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """Run a write; return (rows affected, last insert id)."""
        async with self.raw.cursor() as cursor:
            affected = await cursor.execute(QUERIES[query], params)
            return affected, cursor.lastrowid

    async def execute_many(self, query: str, rows: list[Mapping[str, Any]]) -> int:
        """Run one write for many rows (asyncmy folds an INSERT … VALUES into one statement)."""
        async with self.raw.cursor() as cursor:
            return await cursor.executemany(QUERIES[query], rows)


class Database:
    """The pool. Single statements run in autocommit; several go through `transaction()`."""

    def __init__(self, pool: asyncmy.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, settings: Settings, *, min_size: int = 1) -> Database:
        address = settings.mysql
        pool = await asyncmy.create_pool(
            host=address.host,
            port=address.port,
            user=address.user,
            password=address.password,
            db=address.database,
            minsize=min(min_size, settings.db_pool_size),
            maxsize=settings.db_pool_size,
            autocommit=True,  # transactions are explicit; see transaction()
            charset="utf8mb4",
            # Every read after a row lock sees all that was committed before it (see core/booking.py),
            # and range scans take no gap locks that would stall the API's inserts.
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            pool_recycle=3600,
            connect_timeout=5,
        )
        return cls(pool)

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as raw:
            yield Connection(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """BEGIN … COMMIT on one connection; ROLLBACK if the block raises.

        The one transaction helper: request handlers and the worker both use it.
        """
        async with self.pool.acquire() as raw:
            await raw.begin()
            tx = Connection(raw)
            try:
                yield tx
            except BaseException:
                await _rollback_quietly(raw)
                raise
            await raw.commit()
        for callback in tx._after_commit:
            await callback()

    async def fetch_one(self, query: str, params: Mapping[str, Any] | None = None) -> Row | None:
        async with self.connection() as conn:
            return await conn.fetch_one(query, params)

    async def fetch_all(self, query: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self.connection() as conn:
            return await conn.fetch_all(query, params)

    async def fetch_value(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        async with self.connection() as conn:
            return await conn.fetch_value(query, params)

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> tuple[int, int]:
        async with self.connection() as conn:
            return await conn.execute(query, params)


async def _rollback_quietly(raw: asyncmy.Connection) -> None:
    # The connection may already be dead (that is often why we are here); the pool discards it then.
    try:
        await raw.rollback()
    except Exception:  # noqa: BLE001
        raw.close()


def migrate(settings: Settings, *, rollback_all: bool = False) -> list[str]:
    """Create the database if missing and apply (or roll back) the yoyo migrations; return their ids."""
    import pymysql
    from yoyo import get_backend, read_migrations

    address = settings.mysql
    server = pymysql.connect(
        host=address.host, port=address.port, user=address.user, password=address.password, connect_timeout=5
    )
    try:
        with server.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS `{address.database}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    finally:
        server.close()

    backend = get_backend(address.url())
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        if rollback_all:
            todo = backend.to_rollback(migrations)
            backend.rollback_migrations(todo)
        else:
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
    return [migration.id for migration in todo]
