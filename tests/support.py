"""Real processes for the tests: API servers under uvicorn and arq workers, each with its own environment."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import email.utils
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import pymysql
import pymysql.cursors
import pytest
import redis

from service.core.db import migrate
from service.core.queue import booking_job_id
from service.core.settings import Settings
from tests.factory import Factory

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
# How long a started API or worker may take to answer: a deadline against a hang, not a speed check (under the
# whole suite on two busy cores, importing the app has taken over 20 s).
START_SECONDS = 60
# Child tables first, so deleting in this order breaks no foreign key.
TABLES_CHILD_FIRST = [
    "deliveries", "outbox_events", "webhooks", "reminders", "calendar_feeds", "appointment_history",
    "waitlist_entries", "holds", "appointments", "booking_requests", "password_reset_tokens", "availabilities",
    "time_off", "weekly_hours", "appointment_types", "schedule_changes", "users",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Starts and stops the service's processes; logs go to files under `log_dir`."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        self.started += 1  # numbered by start, so a later process never overwrites an earlier one's log
        log = open(self.log_dir / f"{name}-{self.started}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **self.env, **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT)
        self.running.append(proc)
        return proc

    def start_api(self, extra_env: dict[str, str] | None = None, port: int | None = None, workers: int = 1) -> str:
        """An API process (with `workers`, uvicorn's supervisor of that many); returns its base URL once it
        answers."""
        port = port or free_port()
        self._spawn("api", [str(BIN / "uvicorn"), "service.api.app:app", "--port", str(port), "--no-access-log",
                            "--no-server-header", "--log-level", "warning", "--workers", str(workers)], extra_env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/health", timeout=1)
                return url
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the API on port {port} did not start; see {self.log_dir}")

    def start_worker(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """An arq worker; returns once it polls the queue."""
        env = {**self.env, **(extra_env or {})}
        client = redis.Redis.from_url(env["REDIS_URL"])
        client.delete("arq:queue:health-check")
        proc = self._spawn("worker", [sys.executable, "-m", "worker"], extra_env)
        deadline = time.monotonic() + START_SECONDS
        while not client.exists("arq:queue:health-check"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the worker did not start; see {self.log_dir}")
            time.sleep(0.05)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        _end(proc, timeout)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def claim_redis_db(server: str) -> int:
    """A Redis database number no other test or bench run on this machine is using (arq's queue lives in it)."""
    control = redis.Redis.from_url(f"{server}/0")
    for number in range(1, 16):
        if control.set(f"test-run:redis-db:{number}", os.getpid(), nx=True, ex=3600):
            redis.Redis.from_url(f"{server}/{number}").flushdb()
            return number
    raise RuntimeError("every Redis database 1-15 is claimed by another run")


def release_redis_db(server: str, number: int) -> None:
    redis.Redis.from_url(f"{server}/0").delete(f"test-run:redis-db:{number}")


def drop_database(settings: Settings) -> None:
    address = settings.mysql
    server = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password)
    with server.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{address.database}`")
    server.close()


@contextmanager
def scratch_database(settings: Settings, name: str) -> Iterator[str]:
    """A migrated database of one test's own on the test server, dropped afterwards; yields its DATABASE_URL."""
    scratch = Settings.from_env({"APP_ENV": "test", "DATABASE_URL": settings.mysql.url(f"{name}_{os.getpid()}")})
    drop_database(scratch)  # what a run killed midway left
    migrate(scratch)
    try:
        yield scratch.database_url
    finally:
        drop_database(scratch)


@contextmanager
def own_redis_db(redis_url: str) -> Iterator[str]:
    """A Redis database of one test's own on the test server (no other run's workers poll it); yields its URL."""
    server = redis_url.rsplit("/", 1)[0]
    number = claim_redis_db(server)
    try:
        yield f"{server}/{number}"
    finally:
        redis.Redis.from_url(f"{server}/{number}").flushdb()
        release_redis_db(server, number)


# --- servers a test may break: its own redis-server and mariadbd --------------------------------------------

def _wait_until(ready, what: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout} s")
        time.sleep(0.02)


def _end(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """SIGTERM (a clean shutdown), SIGKILL if it takes too long; reap either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _PrivateServer:
    """What a private server shares: stop (SIGTERM, then SIGKILL), restart, and use as a context manager."""

    proc: subprocess.Popen[bytes] | None
    stop_timeout = 20.0

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        _end(self.proc, timeout=self.stop_timeout)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class PrivateRedis(_PrivateServer):
    """A redis-server of one test's own on a spare port (no persistence), to stop, restart or flush at will.

    A restart comes back empty, like a failover to a replica that had not caught up: queue and locks are gone.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> PrivateRedis:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        _wait_until(self.answers, f"redis-server on port {self.port}", self.proc)
        return self



class PrivateMariaDB(_PrivateServer):
    """A mariadbd of one test's own: a scratch data directory, socket and port, root without a password.

    `extra_args` go on mariadbd's command line (e.g. `--innodb-lock-wait-timeout=1`), so a test can change
    what would be a global on the shared server.
    """

    def __init__(self, workdir: Path, *extra_args: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    # Small buffers and redo log: it starts in a fraction of a second and takes ~30 MB of disk.
    _SIZES = ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M")

    @property
    def server_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def database_url(self, database: str) -> str:
        return f"{self.server_url}/{database}"

    def connect(self, database: str | None = None, **kwargs: object) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=database,
                               autocommit=True, connect_timeout=2, **kwargs)  # type: ignore[arg-type]

    def answers(self) -> bool:
        try:
            self.connect().close()
        except pymysql.err.MySQLError:
            return False
        return True

    def install(self) -> None:
        log = self.workdir / "install.log"
        with open(log, "wb") as out:
            done = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                 *self._SIZES],
                stdout=out, stderr=subprocess.STDOUT, check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed; see {log}")

    def start(self) -> PrivateMariaDB:
        if not self.datadir.exists():
            self.install()
        log = open(self.workdir / "mariadbd.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             f"--socket={self.workdir / 'mysqld.sock'}", f"--pid-file={self.workdir / 'mysqld.pid'}",
             "--skip-networking=0", "--bind-address=127.0.0.1", f"--port={self.port}", "--skip-log-bin",
             "--skip-name-resolve", *self._SIZES, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        _wait_until(self.answers, f"mariadbd on port {self.port}", self.proc, timeout=30)
        return self

    stop_timeout = 60.0

    def crash(self) -> None:
        """SIGKILL: no clean shutdown; the next start runs InnoDB's crash recovery."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def log_of(proc: subprocess.Popen[bytes]) -> Path:
    """The log file a process started by `Processes` writes to (read it while that test still runs: a later
    process may reuse the name)."""
    return Path(os.readlink(f"/proc/{proc.pid}/fd/1"))


# --- looking at rows and problems ------------------------------------------------------------------------------

PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem with this status (naming `field` in errors[], if given); return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"] and body["detail"], body
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body


def rows(mysql: pymysql.Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    with mysql.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


# What the worker changes in the background, on its own time, whatever requests come: the deliveries and reminders
# it makes, and the outbox events it marks dispatched.
WORKERS_TABLES = {"deliveries", "reminders"}
WORKERS_COLUMNS = {"outbox_events": "dispatched_at"}


def snapshot(mysql: pymysql.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (but what the worker changes meanwhile): what a refused request must leave exactly
    as it was."""
    return {table: [{k: v for k, v in row.items() if k != WORKERS_COLUMNS.get(table)}
                    for row in rows(mysql, f"SELECT * FROM {table} ORDER BY id")]  # fixed table names, no input
            for table in TABLES_CHILD_FIRST if table not in WORKERS_TABLES}


def lock_waits(mysql: pymysql.Connection, database: str) -> int:
    """Transactions of this database waiting for a row lock right now.

    Poll it no more often than every 0.1 s: InnoDB refreshes its INNODB_TRX snapshot only once nobody has
    read it for 0.1 s, so a tighter loop reads the same stale snapshot forever.
    """
    return rows(
        mysql, "SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t"
        " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
        " WHERE p.DB = %s AND t.trx_state = 'LOCK WAIT'", database,
    )[0]["n"]


# --- the fault rig: one test's processes, on a database and a Redis of that test's own ---------------------------

def no_overlapping_confirmed(mysql: pymysql.Connection) -> None:
    """The product's promise, checked in the database itself: no two appointments holding their time overlap, for
    a patient, or for a doctor with their buffers."""
    with mysql.cursor() as cursor:
        cursor.execute("""
            SELECT a.id, b.id FROM appointments a JOIN appointments b
              ON a.id < b.id AND a.held_start IS NOT NULL AND b.held_start IS NOT NULL
             AND ((a.patient_id = b.patient_id AND a.start_time < b.end_time AND b.start_time < a.end_time)
               OR (a.doctor_id = b.doctor_id
                   AND a.start_time - INTERVAL a.buffer_before_minutes MINUTE
                       < b.end_time + INTERVAL b.buffer_after_minutes MINUTE
                   AND b.start_time - INTERVAL b.buffer_before_minutes MINUTE
                       < a.end_time + INTERVAL a.buffer_after_minutes MINUTE))
        """)
        assert cursor.fetchall() == ()


class Rig:
    """The API and worker processes of one test, on a database and a Redis that test owns."""

    def __init__(self, processes: Processes, database_url: str, redis_url: str) -> None:
        self.processes = processes
        self.env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
        self.settings = Settings.from_env({**processes.env, **self.env})
        self.started: list[subprocess.Popen[bytes]] = []
        self.workers: list[tuple[subprocess.Popen[bytes], dict[str, str]]] = []
        self._mysql: pymysql.Connection | None = None

    def api(self, **env: str) -> str:
        url = self.processes.start_api({**self.env, **env})
        self.started.append(self.processes.running[-1])
        return url

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        proc = self.processes.start_worker({**self.env, **env})
        self.started.append(proc)
        self.workers.append((proc, env))
        return proc

    def revive(self) -> int:
        """Start again each worker that exited, as the deployment's supervisor does (compose: restart)."""
        revived = 0
        for index, (proc, env) in enumerate(self.workers):
            if proc.poll() is not None:
                self.workers[index] = (self.processes.start_worker({**self.env, **env}), env)
                self.started.append(self.workers[index][0])
                revived += 1
        return revived

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.processes.stop(proc)
        if self._mysql is not None:
            self._mysql.close()

    def connect(self) -> pymysql.Connection:
        address = self.settings.mysql
        return pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                               database=address.database, autocommit=True, connect_timeout=2,
                               cursorclass=pymysql.cursors.DictCursor)

    @property
    def mysql(self) -> pymysql.Connection:
        """The test's own connection, for looking at rows; reconnects after a MySQL restart."""
        if self._mysql is not None:
            try:
                self._mysql.ping(reconnect=False)
            except pymysql.err.Error:
                self._mysql.close()
                self._mysql = None
        if self._mysql is None:
            self._mysql = self.connect()
        return self._mysql

    def rows(self, sql: str, *args: object) -> list[dict[str, Any]]:
        return rows(self.mysql, sql, *args)

    def empty(self) -> None:
        with self.mysql.cursor() as cursor:
            for table in TABLES_CHILD_FIRST:
                cursor.execute(f"DELETE FROM {table}")

    def lock_waits(self) -> int:
        """Transactions of this rig's database waiting for a row lock right now (see `lock_waits`)."""
        return lock_waits(self.mysql, self.settings.mysql.database)

    @asynccontextmanager
    async def client(self, api_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Factory]]:
        async with httpx.AsyncClient(base_url=api_url, timeout=15) as http:
            yield http, Factory(http, self.settings)


def started_rig(processes: Processes, database_url: str, redis_url: str) -> Iterator[Rig]:
    """A test's rig on emptied tables; its processes are stopped after the test."""
    rig = Rig(processes, database_url, redis_url)
    rig.empty()
    yield rig
    rig.stop_all()


async def until(check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy (and return that); fail naming `what` on timeout (a deadline
    against a hang, generous for a busy machine: not a speed check)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
    return result


async def until_ok(http: httpx.AsyncClient, path: str, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (response := await http.get(path)).status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"{path} still answers {response.status_code} after {timeout} s: {response.text}")
        await asyncio.sleep(0.05)
    return response


async def settle(rig: Rig, accepted: list[int], timeout: float = 30, revive: bool = False) -> Counter:
    """Wait until no request is pending, then check the promises; with `revive`, start again meanwhile the
    workers that exited (never a worker armed with a fault point: it would only die again).

    Returns how the requests were decided, as a Counter of (status, reason).
    """
    deadline = time.monotonic() + timeout
    while pending := rig.rows("SELECT id FROM booking_requests WHERE status = 'pending'"):
        if time.monotonic() > deadline:
            pytest.fail(f"{len(pending)} request(s) still pending after {timeout} s: {pending[:10]}")
        if revive:
            rig.revive()
        await asyncio.sleep(0.1)
    requests = rig.rows("SELECT id, status, reason FROM booking_requests ORDER BY id")
    # Nothing lost and nothing made up: the rows are exactly the requests answered 202.
    assert len(requests) == len(accepted)
    assert [r["id"] for r in requests] == sorted(accepted)
    # One appointment per confirmed request, and none for any other.
    confirmed = [r["id"] for r in requests if r["status"] == "confirmed"]
    appointments = rig.rows("SELECT booking_request_id FROM appointments ORDER BY booking_request_id")
    assert [a["booking_request_id"] for a in appointments] == confirmed
    no_overlapping_confirmed(rig.mysql)
    return Counter((r["status"], r["reason"]) for r in requests)


def accepted_ids(responses: list[httpx.Response]) -> list[int]:
    assert [r.status_code for r in responses] == [202] * len(responses), [r.text for r in responses]
    return [r.json()["request_id"] for r in responses]


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for message in self.messages if email.utils.parseaddr(message["To"])[1] == address]


def process_state(proc: subprocess.Popen[bytes]) -> str:
    """R, S, T (stopped), Z ... from /proc."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def job_finished_line(request_id: int) -> str:
    """What arq logs when the booking job of this request returns (followed by its result)."""
    return f"{booking_job_id(request_id)}:book_appointment ●"
