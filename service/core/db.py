"""MySQL access: the asyncmy pool, named queries from sql/, and the one transaction helper."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import asyncmy
import asyncmy.errors
from asyncmy.constants.CLIENT import MULTI_STATEMENTS
from asyncmy.cursors import Cursor, DictCursor

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


Statement = tuple[str, Mapping[str, Any] | None]  # a named query and its parameters
Rows = tuple[str, list[Mapping[str, Any]]]  # a named INSERT … VALUES (…) and the rows it inserts

# An INSERT's head, its VALUES tuple and its tail (asyncmy's executemany folds rows the same way).
INSERT_VALUES = re.compile(r"(\s*(?:INSERT|REPLACE)\b.+\bVALUES\s*)(\(.+\))(\s*(?:ON DUPLICATE.*)?)\Z",
                           re.IGNORECASE | re.DOTALL)
# The named INSERT … VALUES queries, split once: a batch folds their rows into one statement.
FOLDABLE: dict[str, tuple[str, str, str]] = {
    name: match.groups() for name, sql in QUERIES.items() if (match := INSERT_VALUES.match(sql))}

# "{any NAME: condition}" in a named query: the condition once for each item of the list parameter NAME (the item
# its parameters), joined by OR. Each term is an interval of one index (a doctor's range), which MySQL's range
# optimizer scans as such: one statement reads every range of a group, where a query a range cost a statement each.
ANY_OF = re.compile(r"\{any (\w+):\s*(.*?)\}", re.DOTALL)
PARAMETER = re.compile(r"%\((\w+)\)s")
REPEATING = frozenset(name for name, sql in QUERIES.items() if ANY_OF.search(sql))


def check_any_of(name: str, sql: str) -> None:
    """Refuse, as the queries load, what would expand wrongly: a brace inside a condition (the first "}" ends it),
    or a parameter of the query's own named as an item's renamed ones are (NAME_i_key)."""
    rest = ANY_OF.sub("", sql)
    outer = set(PARAMETER.findall(rest))
    if "{" in rest or "}" in rest:
        raise ValueError(f"query {name!r}: a brace outside a whole {{any NAME: condition}}")
    for list_name, condition in ANY_OF.findall(sql):
        if "{" in condition or list_name in outer or any(p.startswith(f"{list_name}_") for p in outer):
            raise ValueError(f"query {name!r}: {{any {list_name}: …}} clashes with a brace or a parameter")


for _name in REPEATING:
    check_any_of(_name, QUERIES[_name])


def render(cursor: Any, query: str, params: Mapping[str, Any] | None) -> str:
    """A named query as MySQL gets it: parameters escaped by the driver (`cursor`: asyncmy's or PyMySQL's), its
    {any …} conditions expanded."""
    if query in REPEATING:
        return expand_any(cursor, QUERIES[query], params or {})
    return cursor.mogrify(QUERIES[query], params)


def expand_any(cursor: Any, sql: str, params: Mapping[str, Any]) -> str:
    """`sql` with each {any NAME: condition} expanded (an empty list matches nothing) and every parameter escaped:
    item i's `x` becomes the parameter NAME_i_x, so each value is escaped once however many terms use it."""
    lists = _any_names(sql)
    flat = {name: value for name, value in params.items() if name not in lists}
    for name in lists:
        flat.update((f"{name}_{i}_{key}", v) for i, item in enumerate(params[name]) for key, v in item.items())
    return cursor.mogrify(_expanded(sql, tuple((name, len(params[name])) for name in lists)), flat)


@lru_cache(maxsize=64)
def _any_names(sql: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for name, _ in ANY_OF.findall(sql)))


@lru_cache(maxsize=512)
def _expanded(sql: str, counts: tuple[tuple[str, int], ...]) -> str:
    """`sql` with its {any …} conditions written out for lists of these lengths (parameters renamed per item)."""
    lengths = dict(counts)

    def terms(match: re.Match[str]) -> str:
        name, condition = match.groups()
        return "(" + " OR ".join(
            "(" + PARAMETER.sub(rf"%({name}_{i}_\1)s", condition) + ")"
            for i in range(lengths[name])) + ")" if lengths[name] else "FALSE"
    return ANY_OF.sub(terms, sql)


class Connection:
    """One pooled connection; runs named queries with named parameters.

    In a transaction, BEGIN goes to MySQL with the first statement, in one round trip (a round trip costs more than
    the statements of a booking do, see the README's benchmark notes); `fetch_batch` and `Batch` send several
    statements in one.
    """

    __slots__ = ("_after_commit", "_begin", "raw")

    def __init__(self, raw: asyncmy.Connection, begin: bool = False) -> None:
        self.raw = raw
        self._begin = begin  # a transaction whose BEGIN is still to be sent
        self._after_commit: list[Callable[[], Awaitable[None]]] = []

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` once this transaction has committed; never if it rolls back."""
        self._after_commit.append(callback)

    async def _run(self, cursor: Cursor, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute `sql` (one statement or several), with the transaction's BEGIN first if it is still to be sent;
        the cursor is left on the first result of `sql`. Returns that result's rows affected."""
        if not self._begin:
            return await cursor.execute(sql, params)
        self._begin = False
        await cursor.execute("BEGIN;\n" + cursor.mogrify(sql, params))
        await cursor.nextset()
        return cursor.rowcount

    async def fetch_one(self, query: str, params: Mapping[str, Any] | None = None) -> Row | None:
        async with self.raw.cursor(DictCursor) as cursor:
            await self._run(cursor, *_statement(cursor, query, params))
            return await cursor.fetchone()

    async def fetch_all(self, query: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        async with self.raw.cursor(DictCursor) as cursor:
            await self._run(cursor, *_statement(cursor, query, params))
            return list(await cursor.fetchall())

    async def fetch_batch(self, statements: list[Statement]) -> list[list[Row]]:
        """Several reads (or locking reads) in one round trip, run in order; each one's rows."""
        async with self.raw.cursor(DictCursor) as cursor:
            await self._run(cursor, _joined(cursor, statements))
            results = [list(await cursor.fetchall())]
            while await cursor.nextset():
                results.append(list(await cursor.fetchall()))
            return results

    async def fetch_value(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        async with self.raw.cursor() as cursor:
            await self._run(cursor, *_statement(cursor, query, params))
            row = await cursor.fetchone()
            return row[0] if row else None

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """Run a write; return (rows affected, last insert id)."""
        async with self.raw.cursor() as cursor:
            affected = await self._run(cursor, *_statement(cursor, query, params))
            return affected, cursor.lastrowid

    async def execute_many(self, query: str, rows: list[Mapping[str, Any]]) -> int:
        """Run one write for many rows (asyncmy folds an INSERT … VALUES into one statement)."""
        if self._begin:  # asyncmy folds only a lone INSERT: BEGIN goes on its own
            self._begin = False
            await self.raw.begin()
        async with self.raw.cursor() as cursor:
            return await cursor.executemany(QUERIES[query], rows)

    def batch(self) -> Batch:
        return Batch(self)


class Batch:
    """Writes whose results nobody reads, sent together in one round trip by `send()`, in the order they were
    added. It takes a Connection's place for them (history.record, outbox.record_events)."""

    __slots__ = ("_conn", "_statements")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._statements: list[Statement | Rows] = []

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> None:
        self._statements.append((query, params))

    async def execute_many(self, query: str, rows: list[Mapping[str, Any]]) -> None:
        """One statement for all the rows if `query` is an INSERT … VALUES (as Connection.execute_many), else one
        each."""
        if not rows:
            return
        if query in FOLDABLE:
            self._statements.append((query, rows))
        else:
            self._statements += [(query, row) for row in rows]

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._conn.after_commit(callback)

    async def send(self) -> None:
        if not self._statements:
            return
        async with self._conn.raw.cursor() as cursor:
            await self._conn._run(cursor, _joined(cursor, self._statements))
            while await cursor.nextset():
                pass
        self._statements = []


def _joined(cursor: Cursor, statements: list[Statement] | list[Statement | Rows]) -> str:
    """Named queries with their parameters escaped by the driver (as `execute` does), as one multi-statement; the rows
    of an INSERT given a list (Rows) folded into its VALUES."""
    return ";\n".join(_folded(cursor, query, params) if isinstance(params, list) else
                       render(cursor, query, params) for query, params in statements)


def _statement(cursor: Cursor, query: str, params: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any] | None]:
    """What `_run` executes for a named query: its text and parameters, or the rendered text of one with {any …}."""
    return (render(cursor, query, params), None) if query in REPEATING else (QUERIES[query], params)


def _folded(cursor: Cursor, query: str, rows: list[Mapping[str, Any]]) -> str:
    head, values, tail = FOLDABLE[query]
    return head + ",".join(cursor.mogrify(values, row) for row in rows) + tail


Writer = Connection | Batch  # where writes whose results nobody reads can go


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
            # Several statements in one round trip (Connection): only named queries from sql/ are ever sent, with
            # every parameter escaped by the driver, so no input can add a statement.
            client_flag=MULTI_STATEMENTS,
            pool_recycle=3600,
            connect_timeout=5,
        )
        return cls(pool)

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncmy.Connection]:
        """A pooled connection. A server that goes away while a new connection is being made can make asyncmy
        raise RuntimeError ("Transport does not expose socket instance", setting keep-alive on a transport already
        closed): that is "can't connect" (2003) too, which the API answers 503."""
        acquired = False
        try:
            async with self.pool.acquire() as raw:
                acquired = True
                yield raw
        except RuntimeError as exc:
            if acquired:  # the caller's, not the connection's
                raise
            raise asyncmy.errors.OperationalError(2003, f"Can't connect to MySQL server: {exc}") from exc

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._acquire() as raw:
            yield Connection(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """BEGIN … COMMIT on one connection; ROLLBACK if the block raises.

        The one transaction helper: request handlers and the worker both use it.
        """
        async with self._acquire() as raw:
            tx = Connection(raw, begin=True)  # BEGIN goes with the first statement
            try:
                yield tx
            except BaseException:
                if not tx._begin:
                    await _rollback_quietly(raw)
                raise
            if not tx._begin:
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
