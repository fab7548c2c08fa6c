"""Real processes for the tests: API servers under uvicorn and arq workers, each with its own environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}-{len(self.running)}.log", "wb")  # noqa: SIM115 - lives with the process
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
        proc = self._spawn("worker", [str(BIN / "arq"), "worker.WorkerSettings"], extra_env)
        deadline = time.monotonic() + 20
        while not client.exists("arq:queue:health-check"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the worker did not start; see {self.log_dir}")
            time.sleep(0.05)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
