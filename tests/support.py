"""Real processes for the tests: API servers under uvicorn and arq workers, each with its own environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx
import pymysql
import redis

from service.settings import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


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

    def start_api(self, extra_env: dict[str, str] | None = None, port: int | None = None) -> str:
        """An API process; returns its base URL once it answers."""
        port = port or free_port()
        self._spawn("api", [str(BIN / "uvicorn"), "service.app:app", "--port", str(port), "--no-access-log",
                            "--log-level", "warning"], extra_env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
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
        deadline = time.monotonic() + 20
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
