"""The booking benchmark: `python -m tests.bench.run [--requests N ...]` (or `make bench`).

In a fresh database it starts the API under uvicorn, N arq workers, a trivial Litestar app under the same
server flags, and the load generator in its own process. It checks in MySQL that no two confirmed appointments
overlap, measures the raw baselines, and prints a table plus JSON (tests/bench/results/latest.json).
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
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pymysql

from service.core.booking import decide_for_doctor
from service.core.db import Database, migrate
from service.core.settings import Settings
from service.core.times import utcnow
from tests.bench.cpu import pids_named
from tests.support import BIN, ROOT, Processes, claim_redis_db, drop_database, free_port, release_redis_db

RESULTS = ROOT / "tests" / "bench" / "results"
MYSQL_SERVER = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
REDIS_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


class DoubleBooking(AssertionError):
    pass


def overlapping_confirmed(settings: Settings) -> list[tuple[int, int]]:
    address = settings.mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database)
    with conn.cursor() as cursor:
        cursor.execute("""
            SELECT a.id, b.id FROM appointments a JOIN appointments b
              ON a.id < b.id AND a.status = 'confirmed' AND b.status = 'confirmed'
             AND a.start_time < b.end_time AND b.start_time < a.end_time
             AND (a.doctor_id = b.doctor_id OR a.patient_id = b.patient_id)""")
        pairs = list(cursor.fetchall())
        cursor.execute("SELECT status, COUNT(*) FROM booking_requests GROUP BY status")
        by_status = dict(cursor.fetchall())
        cursor.execute("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, decided_at) FROM booking_requests"
                       " WHERE decided_at IS NOT NULL ORDER BY 1")
        waits = [row[0] / 1000 for row in cursor.fetchall()]
        if waits:  # stored → decided, as the server saw it: queueing plus the decision itself
            print("server-side stored→decided ms p50/p95/p99: "
                  + "/".join(f"{waits[int(p * (len(waits) - 1))]:.1f}" for p in (0.5, 0.95, 0.99)))
    conn.close()
    if by_status.get("pending"):
        raise AssertionError(f"{by_status['pending']} booking request(s) were never decided")
    return pairs


async def raw_booking_baseline(settings: Settings, bookings: int, concurrency: int) -> float:
    """Bookings per second of the worker's own transaction in a tight loop over asyncmy: no HTTP, no queue.

    One pending request per transaction (no batching), `concurrency` doctors in parallel.
    """
    db = await Database.connect(settings, min_size=concurrency)
    now = utcnow()
    start = now.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=400)
    per_doctor = bookings // concurrency
    doctor_ids = []
    async with db.transaction() as tx:
        raw = tx.raw
        async with raw.cursor() as cursor:
            for i in range(concurrency):
                await cursor.execute(
                    "INSERT INTO users (email, name, role, password_hash, created_at) VALUES (%s, %s, %s, 'x', %s)",
                    (f"raw-doctor-{i}@bench.example", f"Raw {i}", "Doctor", now))
                doctor_ids.append(cursor.lastrowid)
                await cursor.execute(
                    "INSERT INTO users (email, name, role, password_hash, created_at) VALUES (%s, %s, %s, 'x', %s)",
                    (f"raw-patient-{i}@bench.example", f"Raw patient {i}", "Patient", now))
                patient_id = cursor.lastrowid
                await cursor.execute(
                    "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at) VALUES (%s, %s, %s, %s)",
                    (doctor_ids[-1], start, start + timedelta(days=30), now))
                await cursor.executemany(
                    "INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [(patient_id, doctor_ids[-1], start + timedelta(minutes=30 * k),
                      start + timedelta(minutes=30 * k + 30), now) for k in range(per_doctor)])

    async def one_doctor(doctor_id: int) -> int:
        decided = 0
        while decided_now := len((await decide_for_doctor(db, doctor_id, batch_size=1)).decisions):
            decided += decided_now
        return decided

    began = time.perf_counter()
    total = sum(await asyncio.gather(*(one_doctor(d) for d in doctor_ids)))
    elapsed = time.perf_counter() - began
    await db.close()
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


def run(options: argparse.Namespace) -> dict[str, Any]:
    redis_db = claim_redis_db(REDIS_SERVER)
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": f"{MYSQL_SERVER}/bench_{os.getpid()}",
        "REDIS_URL": f"{REDIS_SERVER}/{redis_db}",
        "JWT_SECRET": "bench-secret-that-is-long-enough-for-hs256-0123456789",
        "BCRYPT_ROUNDS": "4",
        "LOGIN_RATE_LIMIT_PER_MINUTE": "100000",
        "REGISTER_RATE_LIMIT_PER_MINUTE": "100000",
        "ACCESS_LOG": os.environ.get("BENCH_ACCESS_LOG", "false"),
        "DB_POOL_SIZE": str(options.pool),
    }
    settings = Settings.from_env(env)
    processes = Processes(env, Path(tempfile.mkdtemp(prefix="bench-logs-")))
    try:
        migrate(settings)
        api, api_pid = start_uvicorn(processes, "service.api.app:app", free_port(), options.api_workers)
        trivial, _ = start_uvicorn(processes, "tests.bench.trivial:app", free_port(), options.api_workers)
        workers = [processes.start_worker().pid for _ in range(options.workers)]
        cpu_groups = {"API": [api_pid], "worker": workers, "MariaDB/MySQL": pids_named("mariadbd", "mysqld"),
                      "Redis": pids_named("redis-server")}  # the servers only if they run on this machine
        config = {"api_url": api, "trivial_url": trivial, "cpu_groups": cpu_groups,
                  "doctors": options.doctors, "patients": options.patients,
                  "days": options.days, "requests": options.requests, "concurrency": options.concurrency,
                  "paced_seconds": options.paced_seconds, "read_seconds": options.read_seconds}
        load = subprocess.run([sys.executable, "-m", "tests.bench.load", json.dumps(config)], cwd=ROOT,
                              env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if load.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{load.stderr[-3000:]}")
        measured = json.loads(load.stdout)
        processes.stop_all()
        double_bookings = overlapping_confirmed(settings)
        raw_per_s = asyncio.run(raw_booking_baseline(settings, options.raw_bookings, options.raw_concurrency))
    finally:
        processes.stop_all()
        drop_database(settings)
        release_redis_db(REDIS_SERVER, redis_db)
    saturated, paced = measured["saturated"], measured["paced"]
    result = {
        "command": " ".join(sys.argv),
        "options": vars(options),
        "accepted_per_s": saturated["accepted_per_s"],
        "decided_per_s": saturated["decided_per_s"],
        "submit_ms": saturated["submit_ms"],
        "decision_ms": saturated["decision_ms"],
        "paced": paced,
        "cpu_ms_per_booking": saturated["cpu_ms_per_booking"],
        "counts": saturated["counts"],
        "double_bookings": len(double_bookings),
        "slots_per_s": measured["slots_per_s"],
        "slots_uncached_per_s": measured["slots_uncached_per_s"],
        "baseline_raw_bookings_per_s": raw_per_s,
        "baseline_trivial_per_s": measured["trivial_per_s"],
        "ratio_decided_to_raw": saturated["decided_per_s"] / raw_per_s,
        "ratio_slots_to_trivial": measured["slots_per_s"] / measured["trivial_per_s"],
    }
    if double_bookings:
        raise DoubleBooking(f"DOUBLE BOOKINGS: {double_bookings[:10]} ({len(double_bookings)} pairs)")
    return result


def table(r: dict[str, Any]) -> str:
    p = r["paced"]
    rows = [
        ("accepted/s (202)", f"{r['accepted_per_s']:.0f}"),
        ("decided/s", f"{r['decided_per_s']:.0f}"),
        ("submit→202 p50/p95/p99 ms", "/".join(f"{r['submit_ms'][k]:.1f}" for k in ("50", "95", "99"))),
        ("submit→decision p50/p95/p99 ms", "/".join(f"{r['decision_ms'][k]:.1f}" for k in ("50", "95", "99"))),
        (f"paced at {p['offered_rate']:.0f}/s: submit→decision p50/p95/p99 ms",
         "/".join(f"{p['decision_ms'][k]:.1f}" for k in ("50", "95", "99"))),
        ("confirmed / rejected / failed", f"{r['counts'].get('confirmed', 0)} / {r['counts'].get('rejected', 0)}"
                                          f" / {r['counts'].get('failed', 0)}"),
        ("double bookings", str(r["double_bookings"])),
        ("CPU ms per decided booking (saturated phase):", ""),
        *((f"  {name}", f"{ms:.2f}") for name, ms in r["cpu_ms_per_booking"].items()),
        ("GET /doctors/{id}/slots req/s", f"{r['slots_per_s']:.0f}"),
        ("  … each for a new range (cache misses)", f"{r['slots_uncached_per_s']:.0f}"),
        ("baseline (a) raw booking tx/s", f"{r['baseline_raw_bookings_per_s']:.0f}"),
        ("baseline (b) trivial Litestar req/s", f"{r['baseline_trivial_per_s']:.0f}"),
        ("decided/s ÷ (a)", f"{r['ratio_decided_to_raw']:.2f}"),
        ("slots req/s ÷ (b)", f"{r['ratio_slots_to_trivial']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>18}" for k, v in rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    # One worker process is the most this 2-core machine, shared with the API, MariaDB, Redis and the load
    # generator, gains from: a second one measured ~20 % slower (its polling and claims cost more than it adds).
    parser.add_argument("--workers", type=int, default=1, help="arq worker processes")
    parser.add_argument("--doctors", type=int, default=50)
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--paced-seconds", type=float, default=10)
    parser.add_argument("--read-seconds", type=float, default=5)
    parser.add_argument("--raw-bookings", type=int, default=4000)
    parser.add_argument("--raw-concurrency", type=int, default=8)
    parser.add_argument("--pool", type=int, default=20, help="MySQL pool size per process")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    return parser.parse_args(argv)


def main() -> int:
    options = parse()
    result = run(options)
    print(table(result))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
