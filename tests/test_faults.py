"""Faults: real API and worker processes killed and frozen, and the Redis and MySQL under them flushed, stopped
and restarted. After each one: every request decided, no overlapping confirmed appointments (per doctor or per
patient), and no request lost (the booking_requests rows are exactly the requests answered 202).

The tests that break a server break one of their own (`PrivateRedis`, `PrivateMariaDB` in tests/support.py).
The others use a database of this module's own on the shared MariaDB, never the run's: the shared stack's
workers, if another module started them, sweep the run's database and would decide the requests these tests
strand on purpose. Every test has its own Redis, so no other worker takes its jobs either.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pymysql.cursors
import pytest
import redis
import redis.asyncio

from service.core.availability import SLOT_TAKEN
from service.core.booking import PATIENT_BUSY
from service.core.db import migrate
from service.core.queue import booking_job_id
from service.core.settings import Settings
from tests.factory import User, at
from tests.support import (
    PrivateMariaDB,
    PrivateRedis,
    Processes,
    Rig,
    accepted_ids,
    job_finished_line,
    log_of,
    process_state,
    settle,
    started_rig,
    until,
    until_ok,
)
from worker.arq_ext import JOB_LEASE_MS
from worker.lock import DoctorLock

# --- 1, 2: a worker killed with SIGKILL ------------------------------------------------------------------------

async def test_worker_killed_inside_the_booking_transaction(rig: Rig) -> None:
    """Killed after its writes, before COMMIT: MySQL rolls them back. Its job runs again once the dead worker's
    lease on it lapses (5 s), and decides the request, at the latest on its last try, which goes without the
    Redis lock the dead worker left behind (it expires in 10 s)."""
    api = rig.api()
    doomed = rig.worker(FAULT_POINT="before_commit")
    async with rig.client(api) as (_, factory):
        doctor, patient = await factory.doctor(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        accepted = accepted_ids([await factory.book(patient, doctor["id"], at(10), at(11))])

    await until(lambda: doomed.poll() is not None, "the worker to die at the fault point")
    assert doomed.returncode == -signal.SIGKILL
    assert [r["status"] for r in rig.rows("SELECT status FROM booking_requests")] == ["pending"]
    assert rig.rows("SELECT id FROM appointments") == []  # its INSERT was rolled back

    rig.worker()
    assert await settle(rig, accepted) == {("confirmed", None): 1}


async def test_worker_killed_after_commit_runs_again_and_changes_nothing(rig: Rig) -> None:
    """Killed after COMMIT, before arq marks the job done: the job runs again (once the dead worker's lease lapses,
    and, the lock it left behind being still there, on its last try) and finds nothing left to decide."""
    api = rig.api()
    doomed = rig.worker(FAULT_POINT="after_commit")
    async with rig.client(api) as (_, factory):
        doctor, patient = await factory.doctor(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        [request_id] = accepted_ids([await factory.book(patient, doctor["id"], at(10), at(11))])

    await until(lambda: doomed.poll() is not None, "the worker to die at the fault point")
    assert doomed.returncode == -signal.SIGKILL
    requests_before = rig.rows("SELECT * FROM booking_requests")
    appointments_before = rig.rows("SELECT * FROM appointments")
    assert [r["status"] for r in requests_before] == ["confirmed"] and len(appointments_before) == 1

    queue = redis.Redis.from_url(rig.env["REDIS_URL"])
    job_id = booking_job_id(request_id)
    assert queue.zscore("arq:queue", job_id) is not None  # never marked done: arq will run it again
    assert 0 < queue.pttl(f"arq:in-progress:{job_id}") <= JOB_LEASE_MS  # once the dead worker's lease lapses
    survivor = rig.worker()
    await until(lambda: job_finished_line(request_id) in log_of(survivor).read_text(), "the job to run again")
    assert f"{job_finished_line(request_id)} 'decided 0'" in log_of(survivor).read_text()
    assert queue.zscore("arq:queue", job_id) is None

    assert rig.rows("SELECT * FROM booking_requests") == requests_before
    assert rig.rows("SELECT * FROM appointments") == appointments_before
    assert await settle(rig, [request_id]) == {("confirmed", None): 1}


async def test_requests_folded_into_a_queued_job_are_all_decided_by_it(rig: Rig, private_redis: PrivateRedis) -> None:
    """While a doctor's job waits in the queue, that doctor's new requests queue nothing (see ENQUEUE_SCRIPT):
    the one job decides all of them, in one transaction, and each long poll still gets its own answer."""
    api = rig.api()  # no worker yet: the jobs wait in the queue
    async with rig.client(api) as (http, factory):
        busy, quiet = await factory.doctor(), await factory.doctor()
        for doctor in (busy, quiet):
            await factory.window(doctor, at(9), at(12))
        patients = [await factory.patient() for _ in range(12)]
        asks = [(busy, at(9 + i // 2 / 2), at(9.5 + i // 2 / 2)) for i in range(10)]  # five slots, two asks each
        asks += [(quiet, at(9), at(10)), (quiet, at(10), at(11))]
        accepted = accepted_ids(list(await asyncio.gather(*(
            factory.book(patient, doctor["id"], start, end)
            for patient, (doctor, start, end) in zip(patients, asks, strict=True)
        ))))
        assert private_redis.client().zcard("arq:queue") == 2  # one job a doctor

        polls = [http.get(f"/booking-requests/{request_id}", params={"wait": 15}, headers=patient.headers)
                 for request_id, patient in zip(accepted, patients, strict=True)]
        worker = rig.worker()
        answers = [response.json() for response in await asyncio.gather(*polls)]
    assert Counter(a["status"] for a in answers[:10]) == {"confirmed": 5, "rejected": 5}
    assert [a["status"] for a in answers[10:]] == ["confirmed", "confirmed"]
    assert all(a["appointment_id"] for a in answers if a["status"] == "confirmed")
    assert await settle(rig, accepted) == {("confirmed", None): 7, ("rejected", SLOT_TAKEN): 5}
    # The polls' answers, built from the published decisions, are what MySQL holds.
    stored = {r["id"]: r for r in rig.rows("SELECT id, status, reason, appointment_id FROM booking_requests")}
    assert all((a["status"], a["reason"], a["appointment_id"]) == (stored[a["request_id"]]["status"],
               stored[a["request_id"]]["reason"], stored[a["request_id"]]["appointment_id"]) for a in answers)
    log = log_of(worker).read_text()  # which request's job came first is up to the race of the POSTs
    assert ":book_appointment ● 'decided 10'" in log and ":book_appointment ● 'decided 2'" in log


# --- 3, 4: Redis loses the queue, Redis is down ----------------------------------------------------------------

@pytest.mark.parametrize("lose_queue", ["flushdb", "restart"])
async def test_redis_losing_the_queue_loses_no_request(
    rig: Rig, private_redis: PrivateRedis, lose_queue: str
) -> None:
    api = rig.api()  # and no worker yet: the jobs wait in the queue
    async with rig.client(api) as (_, factory):
        doctor = await factory.doctor()
        await factory.window(doctor, at(9), at(12))
        patients = [await factory.patient() for _ in range(8)]
        slots = [(at(10 + i % 4 / 2), at(10.5 + i % 4 / 2)) for i in range(8)]  # four slots, two asks each
        accepted = accepted_ids(list(await asyncio.gather(*(
            factory.book(p, doctor["id"], *slot) for p, slot in zip(patients, slots, strict=True)
        ))))
    assert private_redis.client().zcard("arq:queue") == 1  # the first request's job; it will decide them all

    if lose_queue == "flushdb":
        private_redis.client().flushdb()
    else:  # a restart without persistence: everything in it is gone
        private_redis.restart()
    assert private_redis.client().zcard("arq:queue") == 0

    rig.worker()
    rig.worker()
    assert await settle(rig, accepted) == {("confirmed", None): 4, ("rejected", SLOT_TAKEN): 4}


async def test_redis_down_when_bookings_arrive(rig: Rig, private_redis: PrivateRedis) -> None:
    api = rig.api()
    rig.worker()
    async with rig.client(api) as (http, factory):
        doctor = await factory.doctor()
        await factory.window(doctor, at(9), at(12))
        patients = [await factory.patient() for _ in range(3)]

        private_redis.stop()
        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "mysql": "ok", "redis": "unavailable"}
        accepted = accepted_ids([
            await factory.book(p, doctor["id"], at(9 + i), at(10 + i)) for i, p in enumerate(patients)
        ])
        assert [r["status"] for r in rig.rows("SELECT status FROM booking_requests")] == ["pending"] * 3

        private_redis.start()
        await until_ok(http, "/health")
        # arq's worker exits when it loses Redis: settle() starts it again, as the supervisor would.
        assert await settle(rig, accepted, revive=True) == {("confirmed", None): 3}


# --- 5: a lock holder frozen past its lock's TTL ---------------------------------------------------------------

async def test_an_expired_lock_holder_cannot_release_the_next_holders_lock(private_redis: PrivateRedis) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        stale = DoctorLock(client, 7, ttl_ms=100)
        assert await stale.acquire(0)
        await asyncio.sleep(0.2)  # expired
        current = DoctorLock(client, 7, ttl_ms=10_000)
        assert await current.acquire(0.5)
        async with client.pubsub() as pubsub:
            await pubsub.subscribe("news")
            # A job ends with one round trip: the release, and its decisions published whether or not it held on.
            async with client.pipeline(transaction=False) as pipe:
                stale.release_in(pipe, ("news", b"stale holder's decisions"))
                assert await pipe.execute() == [0]
            assert not await stale.release()  # a job that failed releases without announcing: the same check
            assert await client.get(current.key) == current.token.encode()
            async with client.pipeline(transaction=False) as pipe:
                current.release_in(pipe, ("news", b"current holder's decisions"))
                assert await pipe.execute() == [1]
            assert not await client.exists(current.key)
            heard = [m["data"] for m in [await pubsub.get_message(timeout=1) for _ in range(3)] if m]
        assert heard[1:] == [b"stale holder's decisions", b"current holder's decisions"]  # [0]: subscribed
    finally:
        await client.aclose()


async def test_a_frozen_lock_holder_past_its_ttl(rig: Rig, private_redis: PrivateRedis) -> None:
    """A worker frozen (SIGSTOP) inside its booking transaction, past its Redis lock's TTL, while another worker
    books the same slot: MySQL's row lock still serializes them, and the late release leaves the other's lock."""
    api = rig.api()
    no_sweep = {"SWEEP_AFTER_SECONDS": "600"}  # not under test here: keep it from re-running the frozen job
    async with rig.client(api) as (_, factory):
        doctor, alice, bob = await factory.doctor(), await factory.patient(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        key = f"lock:doctor:{doctor['id']}"
        locks = private_redis.client()

        frozen = rig.worker(FAULT_POINT="before_commit", FAULT_ACTION="stop", BOOKING_LOCK_TTL_MS="300",
                            **no_sweep)
        [first] = accepted_ids([await factory.book(alice, doctor["id"], at(10), at(11))])
        await until(lambda: process_state(frozen) == "T", "the worker to freeze inside its transaction")
        await until(lambda: not locks.exists(key), "its Redis lock to expire", timeout=5)

        # Bob's patient row, held by the test, will stop the second worker after it has the doctor's row, so
        # that it still holds its Redis lock when the frozen worker wakes up and releases.
        blocker = rig.connect()
        try:
            blocker.begin()
            with blocker.cursor() as cursor:
                cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (bob["id"],))
            rig.worker(**no_sweep)
            [second] = accepted_ids([await factory.book(bob, doctor["id"], at(10), at(11))])
            others_token = await until(lambda: locks.get(key), "the second worker to take the Redis lock")
            await until(lambda: rig.lock_waits() == 1, "the second worker to wait for the doctor's row", every=0.2)

            os.kill(frozen.pid, signal.SIGCONT)
            frozen_log = log_of(frozen)
            await until(lambda: job_finished_line(first) in frozen_log.read_text(), "the frozen worker to finish")
            assert "expired before the booking finished" in frozen_log.read_text()
            assert locks.get(key) == others_token  # its release did not free the second worker's lock
            status = {r["id"]: r["status"] for r in rig.rows("SELECT id, status FROM booking_requests")}
            assert status == {first: "confirmed", second: "pending"}
        finally:
            blocker.rollback()
            blocker.close()

        outcome = await settle(rig, [first, second])
    assert outcome == {("confirmed", None): 1, ("rejected", SLOT_TAKEN): 1}
    assert rig.rows("SELECT patient_id FROM appointments") == [{"patient_id": alice["id"]}]
    # The second worker released its own lock (just after its commit, which settle saw).
    await until(lambda: not locks.exists(key), "the second worker to release its lock", timeout=5)


# --- 6: lock-wait timeout and deadlock inside the booking transaction ------------------------------------------

@pytest.fixture(scope="module")
def strict_mariadb(tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]) -> Iterator[str]:
    """A private mariadbd whose lock waits time out after 1 s (a global: not for the shared server)."""
    with PrivateMariaDB(tmp_path_factory.mktemp("strict-mariadb"), "--innodb-lock-wait-timeout=1") as server:
        url = server.database_url("appointments")
        migrate(Settings.from_env({**test_env, "DATABASE_URL": url}))
        yield url


@pytest.fixture
def strict_rig(processes: Processes, strict_mariadb: str, private_redis: PrivateRedis) -> Iterator[Rig]:
    yield from started_rig(processes, strict_mariadb, private_redis.url)


@pytest.mark.parametrize("conflict", ["lock_timeouts", "lock_deadlocks"])
async def test_lock_conflicts_in_the_booking_transaction_are_retried(strict_rig: Rig, conflict: str) -> None:
    """A lock-wait timeout (1205) or a deadlock (1213) in the booking transaction: it is rolled back and run
    again, and the request is decided, not failed."""
    rig = strict_rig
    api = rig.api()
    worker = rig.worker()

    def conflicts() -> int:  # InnoDB's own count; this server runs nothing but this test
        return rig.rows("SELECT `COUNT` AS n FROM information_schema.INNODB_METRICS WHERE NAME = %s", conflict)[0]["n"]

    async with rig.client(api) as (_, factory):
        doctor, other_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        before = conflicts()
        blocker = rig.connect()
        try:
            blocker.begin()
            with blocker.cursor() as cursor:
                if conflict == "lock_timeouts":
                    # The doctor's row, held past innodb_lock_wait_timeout (1 s): the worker's wait times out.
                    cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (doctor["id"],))
                else:
                    # Writes first, so that InnoDB picks the worker's lighter transaction as the victim; then
                    # the patient's row, which the worker wants after the doctor's.
                    cursor.executemany(
                        "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)"
                        " VALUES (%s, %s, %s, NOW())",
                        [(other_doctor["id"], at(i, offset=3).replace(tzinfo=None),
                          at(i + 0.5, offset=3).replace(tzinfo=None)) for i in range(40)],
                    )
                    cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (patient["id"],))
            [request_id] = accepted_ids([await factory.book(patient, doctor["id"], at(10), at(11))])
            if conflict == "lock_deadlocks":
                await until(lambda: rig.lock_waits() == 1, "the worker to wait for the patient's row", every=0.2)
                try:
                    with blocker.cursor() as cursor:  # closes the cycle: the worker holds the doctor's row
                        cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (doctor["id"],))
                except pymysql.err.OperationalError as exc:
                    pytest.fail(f"InnoDB chose the test's transaction as the deadlock victim: {exc}")
            await until(lambda: conflicts() > before, f"the worker's transaction to hit {conflict}")
            assert [r["status"] for r in rig.rows("SELECT status FROM booking_requests")] == ["pending"]
        finally:
            blocker.rollback()
            blocker.close()
        assert await settle(rig, [request_id]) == {("confirmed", None): 1}
    await until(lambda: job_finished_line(request_id) in log_of(worker).read_text(), "the job's result")
    assert f"{job_finished_line(request_id)} 'decided 1'" in log_of(worker).read_text()


# --- 7: MySQL restarted under load -----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "crash"])
async def test_mysql_restarted_under_load(
    tmp_path: Path, processes: Processes, private_redis: PrivateRedis, how: str
) -> None:
    """Clients keep booking while MySQL restarts: the API answers 503 problem+json meanwhile (never 500, never
    hangs), a client that retries with its Idempotency-Key gets its 202, and every request is decided."""
    with PrivateMariaDB(tmp_path / "mariadb") as server:
        url = server.database_url("appointments")
        migrate(Settings.from_env({**processes.env, "DATABASE_URL": url}))
        rig = Rig(processes, url, private_redis.url)
        try:
            apis = [rig.api(), rig.api()]
            rig.worker()
            rig.worker()
            async with rig.client(apis[0]) as (http, factory):
                doctors = [await factory.doctor() for _ in range(3)]
                for doctor in doctors:
                    await factory.window(doctor, at(8), at(16))
                patients = [await factory.patient() for _ in range(20)]
                accepted, answers, slowest = await _book_through_a_restart(
                    server, how, apis, doctors, patients
                )
                assert (await http.get("/health")).status_code == 200

            assert set(answers) <= {202, 409, 503}, answers  # 409: a time known taken, refused at once
            assert answers[503] > 0, "no request saw the outage"
            assert slowest < 6, f"a request took {slowest:.1f} s"
            outcome = await settle(rig, accepted, revive=True)
            assert {status for status, _ in outcome} <= {"confirmed", "rejected"}, outcome
            assert {reason for _, reason in outcome} <= {None, SLOT_TAKEN, PATIENT_BUSY}, outcome
        finally:
            rig.stop_all()


async def _book_through_a_restart(
    server: PrivateMariaDB, how: str, apis: list[str], doctors: list[User], patients: list[User]
) -> tuple[list[int], Counter, float]:
    """Eight clients book in a loop while MySQL goes away (`stop`: a clean shutdown, `crash`: SIGKILL) for two
    seconds and comes back; a 503 is retried with the same Idempotency-Key.

    Returns the request ids answered 202, the count of each status code, and the slowest call's duration.
    """
    rng = random.Random(7)
    stop = asyncio.Event()
    accepted: list[int] = []
    answers: Counter = Counter()
    health_during_outage: list[dict] = []
    slowest = 0.0

    async def call(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
        nonlocal slowest
        started = time.monotonic()
        response = await http.request(method, path, **kwargs)
        slowest = max(slowest, time.monotonic() - started)
        return response

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=apis[number % len(apis)], timeout=10) as http:
            while not stop.is_set():
                patient, doctor = rng.choice(patients), rng.choice(doctors)
                start = at(8 + rng.randrange(16) / 2)
                body = {"doctor_id": doctor["id"], "start_time": start.isoformat(),
                        "end_time": (start + timedelta(minutes=30)).isoformat()}
                headers = {**patient.headers, "Idempotency-Key": str(uuid.uuid4())}
                while True:
                    response = await call(http, "POST", "/appointments", json=body, headers=headers)
                    answers[response.status_code] += 1
                    if response.status_code != 503:
                        break
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert response.json()["status"] == 503
                    await asyncio.sleep(0.1)  # then the same request again, with the same key
                if response.status_code == 202:
                    accepted.append(response.json()["request_id"])
                elif response.status_code == 409:
                    assert response.json()["reason"] == SLOT_TAKEN and "request_id" not in response.json()
                await asyncio.sleep(0.05)

    async def watch_health() -> None:
        async with httpx.AsyncClient(base_url=apis[0], timeout=10) as http:
            while not stop.is_set():
                response = await call(http, "GET", "/health")
                if response.status_code == 503:
                    health_during_outage.append(response.json())
                await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(client(n)) for n in range(8)] + [asyncio.create_task(watch_health())]
    try:
        await until(lambda: accepted, "a booking to get through before the restart")
        await asyncio.to_thread(server.stop if how == "stop" else server.crash)
        await asyncio.sleep(2)
        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert health_during_outage, "/health never said 503 while MySQL was down"
    assert {h["mysql"] for h in health_during_outage} == {"unavailable"}
    return accepted, answers, slowest
