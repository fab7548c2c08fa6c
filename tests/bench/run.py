"""The benchmark: `python -m tests.bench.run [--scenario NAME ...] [knobs]` (or `make bench`: every scenario).

Scenarios: steady (booking at fixed concurrency, against the raw booking transaction), rush (thousands of patients
at one instant for a few hundred slots: exactly one winner a slot, the earliest eligible one), directory (thousands of
doctors searched by next free slot, against a trivial endpoint), mixed (reads, bookings, reschedules and
cancellations at a fixed rate), soak (the mixed day for five minutes: memory and latency over time).

Each scenario gets a fresh database, its own API under uvicorn, arq workers (and a trivial Litestar app under the
same server flags where it is compared with one), and a load generator in its own process. Afterwards the database
is checked: no two confirmed appointments overlap (buffers included), no request is left pending; a violation fails
the run (exit status 1) after the results are written. Prints a table a scenario, writes
tests/bench/results/latest.json (every figure by scenario: `rush.fairness_violations`) and latest.png (submit→decision
over time in the rush and the soak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from service.core.booking import decide_for_doctor
from service.core.db import Database, migrate
from service.core.settings import Settings
from service.core.times import utcnow
from tests.bench import checks, directory, mixed, rush
from tests.bench.cpu import pids_named
from tests.bench.report import flatten, plot, tables
from tests.support import BIN, ROOT, Processes, claim_redis_db, drop_database, free_port, release_redis_db

RESULTS = ROOT / "tests" / "bench" / "results"
MYSQL_SERVER = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
SCENARIOS = ("steady", "rush", "directory", "mixed", "soak")
SLOTS_A_DAY = 16  # the raw baseline's: 30 minutes apart from 08:00 to 16:00


class BenchmarkFailed(AssertionError):
    """A scenario left the database wrong (a double booking, a request never decided) or the service failed."""


async def raw_booking_baseline(settings: Settings, bookings: int, concurrency: int) -> float:
    """Bookings per second of the worker's own transaction in a tight loop over asyncmy: no HTTP, no queue.

    One pending request per transaction (no batching), `concurrency` doctors in parallel, each request of an
    appointment type with a buffer as in the steady load (its history and outbox rows written as there), each one
    confirmed (the run fails otherwise: a rejection writes less than a booking).
    """
    db = await Database.connect(settings, min_size=concurrency)
    now = utcnow()
    start = now.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=300)
    per_doctor = bookings // concurrency
    doctor_ids = []
    async with db.connection() as conn, conn.raw.cursor() as cursor:  # the setup, a statement at a time
        for i in range(concurrency):
            await cursor.execute(
                "INSERT INTO users (email, name, role, password_hash, created_at) VALUES (%s, %s, %s, 'x', %s)",
                (f"raw-doctor-{i}@bench.example", f"Raw {i}", "Doctor", now))
            doctor_ids.append(cursor.lastrowid)
            await cursor.execute(
                "INSERT INTO users (email, name, role, password_hash, created_at) VALUES (%s, %s, %s, 'x', %s)",
                (f"raw-patient-{i}@bench.example", f"Raw patient {i}", "Patient", now))
            patient_id = cursor.lastrowid
            # Windows of 08:00-16:00 (a window is at most 24 hours: the decision reads no longer ones whole).
            await cursor.executemany(
                "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at) VALUES (%s, %s, %s, %s)",
                [(doctor_ids[-1], start + timedelta(days=day), start + timedelta(days=day, hours=8), now)
                 for day in range(-(-per_doctor // SLOTS_A_DAY))])
            await cursor.execute(
                "INSERT INTO appointment_types (doctor_id, name, duration_minutes, buffer_after_minutes,"
                " min_notice_minutes, created_at, updated_at) VALUES (%s, 'Consultation', 25, 5, 60, %s, %s)",
                (doctor_ids[-1], now, now))
            type_id = cursor.lastrowid
            await cursor.executemany(
                "INSERT INTO booking_requests (patient_id, doctor_id, appointment_type_id, start_time, end_time,"
                " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                [(patient_id, doctor_ids[-1], type_id, slot, slot + timedelta(minutes=25), now)
                 for slot in (start + timedelta(days=k // SLOTS_A_DAY, minutes=30 * (k % SLOTS_A_DAY))
                              for k in range(per_doctor))])

    async def one_doctor(doctor_id: int) -> int:
        decided = 0
        while decided_now := len((await decide_for_doctor(db, doctor_id, batch_size=1)).decisions):
            decided += decided_now
        return decided

    began = time.perf_counter()
    total = sum(await asyncio.gather(*(one_doctor(d) for d in doctor_ids)))
    elapsed = time.perf_counter() - began
    async with db.connection() as conn, conn.raw.cursor() as cursor:
        await cursor.execute("SELECT status, COUNT(*) FROM booking_requests WHERE doctor_id IN %s GROUP BY status",
                             (tuple(doctor_ids),))
        outcomes = dict(await cursor.fetchall())
    await db.close()
    if outcomes != {"confirmed": per_doctor * concurrency}:
        raise BenchmarkFailed(f"the raw baseline's requests should all be confirmed: {outcomes}")
    return total / elapsed


def start_uvicorn(processes: Processes, app: str, port: int, api_workers: int) -> tuple[str, int]:
    proc = processes._spawn("uvicorn", [str(BIN / "uvicorn"), app, "--port", str(port), "--workers",
                                        str(api_workers), "--no-access-log", "--no-server-header",
                                        "--log-level", "warning"], None)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(url + "/", timeout=1)
            return url, proc.pid
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{app} did not start")


@dataclass
class Stack:
    """One scenario's fresh database and running processes."""

    settings: Settings
    env: dict[str, str]
    processes: Processes
    api_url: str = ""
    trivial_url: str = ""
    cpu_groups: dict[str, list[int]] = field(default_factory=dict)

    def load(self, scenario: str, config: dict[str, Any], seconds: float = 600) -> dict[str, Any]:
        """Run the load generator in its own process on `config`; its JSON result."""
        config = {"scenario": scenario, "api_url": self.api_url, "trivial_url": self.trivial_url,
                  "cpu_groups": self.cpu_groups, **config}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(config, file)
        try:
            done = subprocess.run([sys.executable, "-m", "tests.bench.load", file.name], cwd=ROOT,
                                  env={**os.environ, **self.env}, capture_output=True, text=True, check=False,
                                  timeout=seconds + 600)
        finally:
            os.unlink(file.name)
        if done.returncode != 0:
            raise RuntimeError(f"the load generator failed ({scenario}):\n{done.stderr[-3000:]}")
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"the load generator's output is not its JSON result ({scenario}: {exc}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}") from exc

    def check(self) -> dict[str, Any]:
        """The database once every request had its chance to be decided (the processes still run)."""
        checks.wait_until_decided(self.settings)
        return checks.database_state(self.settings)


@contextmanager
def stack(options: argparse.Namespace, scenario: str, redis_db: int, trivial: bool = False) -> Iterator[Stack]:
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": f"{MYSQL_SERVER}/bench_{os.getpid()}_{scenario}",
        "REDIS_URL": f"{REDIS_SERVER}/{redis_db}",
        "JWT_SECRET": "bench-secret-that-is-long-enough-for-hs256-0123456789",
        "BCRYPT_ROUNDS": "4",
        "LOGIN_RATE_LIMIT_PER_MINUTE": "100000",
        "REGISTER_RATE_LIMIT_PER_MINUTE": "100000",
        "ACCESS_TOKEN_EXPIRE_MINUTES": "1440",
        "ACCESS_LOG": os.environ.get("BENCH_ACCESS_LOG", "false"),
        "DB_POOL_SIZE": str(options.pool),
    }
    settings = Settings.from_env(env)
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    drop_database(settings)  # what a run killed midway left
    here = Stack(settings, env, Processes(env, Path(tempfile.mkdtemp(prefix=f"bench-{scenario}-logs-"))))
    try:
        migrate(settings)
        here.api_url, api_pid = start_uvicorn(here.processes, "service.api.app:app", free_port(),
                                              options.api_workers)
        if trivial:
            here.trivial_url, _ = start_uvicorn(here.processes, "tests.bench.trivial:app", free_port(),
                                                options.api_workers)
        workers = [here.processes.start_worker().pid for _ in range(options.workers)]
        here.cpu_groups = {"API": [api_pid], "worker": workers,
                           "MariaDB/MySQL": pids_named("mariadbd", "mysqld"),
                           "Redis": pids_named("redis-server")}  # the servers only if they run on this machine
        yield here
    finally:
        here.processes.stop_all()
        drop_database(settings)


def steady(options: argparse.Namespace, redis_db: int, _: dict[str, Any]) -> dict[str, Any]:
    with stack(options, "steady", redis_db, trivial=True) as here:
        measured = here.load("steady", {
            "doctors": options.doctors, "patients": options.patients, "days": options.days,
            "requests": options.requests, "concurrency": options.concurrency,
            "paced_seconds": options.paced_seconds, "read_seconds": options.read_seconds,
            "idempotency_keys": False})
        state = here.check()
        here.processes.stop_all()
        raw_per_s = asyncio.run(raw_booking_baseline(here.settings, options.raw_bookings, options.raw_concurrency))
    saturated, paced = measured["saturated"], measured["paced"]
    return {
        "accepted_per_s": saturated["accepted_per_s"],
        "decided_per_s": saturated["decided_per_s"],
        "submit_ms": saturated["submit_ms"],
        "decision_ms": saturated["decision_ms"],
        "paced": paced,
        "cpu_ms_per_booking": saturated["cpu_ms_per_booking"],
        "counts": saturated["counts"],
        "refused_at_once": saturated["refused_at_once"],
        "connection_retries": measured["connection_retries"],
        "slots_per_s": measured["slots_per_s"],
        "slots_uncached_per_s": measured["slots_uncached_per_s"],
        "baseline_raw_bookings_per_s": raw_per_s,
        "baseline_trivial_per_s": measured["trivial_per_s"],
        "ratio_decided_to_raw": saturated["decided_per_s"] / raw_per_s,
        "ratio_slots_to_trivial": measured["slots_per_s"] / measured["trivial_per_s"],
        "double_bookings": state["double_bookings"], "pending": state["pending"],
        "database": state,
        "violations": checks.violations_of(state)
        + [f"{n} booking(s) ended {status}" for status, n in saturated["counts"].items()
           if status not in ("confirmed", "rejected")],
    }


def run_rush(options: argparse.Namespace, redis_db: int, _: dict[str, Any]) -> dict[str, Any]:
    with stack(options, "rush", redis_db) as here:
        config = rush.prepare(here.settings, options)
        measured = here.load("rush", config)
        state = here.check()
        fair = checks.fairness(here.settings)
    violations = checks.violations_of(state)
    if measured["confirmed"] != measured["slots"] or state["confirmed_appointments"] != measured["slots"]:
        violations.append(f"{measured['confirmed']} confirmed ({state['confirmed_appointments']} in the database)"
                          f" for {measured['slots']} slots")
    if measured["http_5xx"] or measured["undecided"]:
        violations.append(f"{measured['http_5xx']} 5xx, {measured['undecided']} attempt(s) never decided:"
                          f" {measured['counts']}")
    return measured | fair | {"double_bookings": state["double_bookings"], "database": state,
                              "violations": violations}


def run_directory(options: argparse.Namespace, redis_db: int, _: dict[str, Any]) -> dict[str, Any]:
    with stack(options, "directory", redis_db, trivial=True) as here:
        began = time.perf_counter()
        config = directory.prepare(here.settings, options)
        seeded_in = time.perf_counter() - began
        measured = here.load("directory", config, options.directory_seconds * 3)
        state = here.check()
    return measured | {"seed_seconds": seeded_in, "double_bookings": state["double_bookings"], "database": state,
                       "violations": checks.violations_of(state)}


def mixed_rate(options: argparse.Namespace, results: dict[str, Any]) -> tuple[float, str]:
    """Half the steady rate: of this run's steady scenario, else of the last one written, else a fixed guess."""
    if options.mixed_rate:
        return options.mixed_rate, "--mixed-rate"
    if "steady" in results:
        return results["steady"]["decided_per_s"] / 2, "half of this run's steady decided/s"
    try:
        previous = json.loads(options.out.read_text())["steady"]["decided_per_s"]
        return previous / 2, f"half of the steady decided/s in {options.out.name}"
    except (OSError, KeyError, TypeError, ValueError):
        return 200.0, "no steady figure at hand: 200/s"


def run_mixed(options: argparse.Namespace, redis_db: int, results: dict[str, Any], scenario: str = "mixed",
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rate, source = mixed_rate(options, results)
    seconds = options.mixed_seconds if scenario == "mixed" else options.soak_seconds
    with stack(options, scenario, redis_db) as here:
        config = mixed.prepare(here.settings, options)
        measured = here.load(scenario, config | {"rate": rate, "seconds": seconds, **(extra or {})},
                             seconds + options.soak_warmup)
        state = here.check()
    violations = checks.violations_of(state)
    if measured["errors"]:
        violations.append(f"{measured['errors']} operation(s) failed, e.g. {measured['error_examples']}")
    return measured | {"rate_source": source, "double_bookings": state["double_bookings"],
                       "pending": state["pending"], "database": state, "violations": violations}


def run_soak(options: argparse.Namespace, redis_db: int, results: dict[str, Any]) -> dict[str, Any]:
    return run_mixed(options, redis_db, results, "soak", {"warmup_seconds": options.soak_warmup})


RUNNERS: dict[str, Callable[[argparse.Namespace, int, dict[str, Any]], dict[str, Any]]] = {
    "steady": steady, "rush": run_rush, "directory": run_directory, "mixed": run_mixed, "soak": run_soak}


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Each chosen scenario in turn; their results by name (each with its `violations`, empty when correct)."""
    redis_db = claim_redis_db(REDIS_SERVER)
    results: dict[str, Any] = {}
    try:
        for scenario in options.scenario:
            began = time.perf_counter()
            results[scenario] = RUNNERS[scenario](options, redis_db, results) | {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "wall_seconds": time.perf_counter() - began}
    finally:
        release_redis_db(REDIS_SERVER, redis_db)
    return results


def write(results: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """latest.json: this run's scenarios over those of earlier runs not run now; the plot next to it."""
    try:
        written = json.loads(options.out.read_text())
        if not isinstance(written, dict) or "figures" not in written:
            written = {}
    except (OSError, ValueError):
        written = {}
    timelines = {name: result.pop("timeline", None) for name, result in results.items()}
    for name, result in results.items():
        written[name] = result | {"command": " ".join(sys.argv), "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}}
    written["figures"] = flatten({name: written[name] for name in SCENARIOS if name in written})
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(written, indent=2, default=str))
    if any(timelines.get(name) for name in ("rush", "soak")):
        plot({name: line for name, line in timelines.items() if name in ("rush", "soak") and line},
             options.out.with_suffix(".png"))
    return written


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="which to run, in this order (default: all)")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    # One worker process is the most this 2-core machine, shared with the API, MariaDB, Redis and the load
    # generator, gains from: a second one measured ~20 % slower (its polling and claims cost more than it adds).
    parser.add_argument("--workers", type=int, default=1, help="arq worker processes")
    parser.add_argument("--pool", type=int, default=20, help="MySQL pool size per process")
    steady_group = parser.add_argument_group("steady")
    steady_group.add_argument("--doctors", type=int, default=50)
    steady_group.add_argument("--patients", type=int, default=400)
    steady_group.add_argument("--days", type=int, default=20)
    steady_group.add_argument("--requests", type=int, default=6000)
    steady_group.add_argument("--concurrency", type=int, default=64)
    steady_group.add_argument("--paced-seconds", type=float, default=10)
    steady_group.add_argument("--read-seconds", type=float, default=5)
    steady_group.add_argument("--raw-bookings", type=int, default=4000)
    steady_group.add_argument("--raw-concurrency", type=int, default=8)
    rush_group = parser.add_argument_group("rush")
    rush_group.add_argument("--rush-doctors", type=int, default=20)
    rush_group.add_argument("--rush-slots", type=int, default=20, help="slots per doctor")
    rush_group.add_argument("--rush-patients", type=int, default=2000)
    rush_group.add_argument("--rush-attempts", type=int, default=10_000)
    directory_group = parser.add_argument_group("directory")
    directory_group.add_argument("--directory-doctors", type=int, default=2000)
    directory_group.add_argument("--directory-readers", type=int, default=50)
    directory_group.add_argument("--directory-seconds", type=float, default=10, help="per kind of read")
    mixed_group = parser.add_argument_group("mixed and soak")
    mixed_group.add_argument("--mixed-doctors", type=int, default=50)
    mixed_group.add_argument("--mixed-patients", type=int, default=400)
    mixed_group.add_argument("--mixed-rate", type=float, default=None,
                             help="operations a second (default: half the steady decided/s)")
    mixed_group.add_argument("--mixed-seconds", type=float, default=60)
    mixed_group.add_argument("--soak-seconds", type=float, default=300)
    mixed_group.add_argument("--soak-warmup", type=float, default=20, help="seconds before memory is first read")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    return parser.parse_args(argv)


def failures(results: dict[str, Any]) -> list[str]:
    return [f"{name}: {violation}" for name, result in results.items() for violation in result["violations"]]


def main() -> int:
    options = parse()
    results = run(options)
    print(tables(results))
    write(results, options)
    print(f"\nwritten to {options.out} (and {options.out.with_suffix('.png').name})")
    if found := failures(results):
        print("\n" + "!" * 80 + "\nCORRECTNESS VIOLATED:\n" + "\n".join(found) + "\n" + "!" * 80, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
