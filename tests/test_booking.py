"""Queue-backed booking: the walkthrough, races across processes, idempotency, at-least-once jobs, the sweep."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pymysql
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import deserialize_job
from arq.worker import func

from service.api.notifications import Notifications
from service.api.schedule_cache import ScheduleVersions
from service.api.security import UserCache
from service.core.availability import IN_PAST, OUTSIDE_AVAILABILITY, SLOT_TAKEN, Available, DoctorTime, Taken
from service.core.booking import PATIENT_BUSY, PendingRequest, decide
from service.core.db import Database
from service.core.queue import (
    DECISIONS,
    QUEUED_MARKER_MS,
    Decided,
    Decision,
    channel,
    enqueue_booking,
    publish_decisions,
    queued_marker_key,
    read_decided_message,
)
from service.core.settings import Settings
from service.core.times import utcnow
from tests.factory import Factory, User, at, iso
from tests.support import Processes, claim_redis_db, log_of, no_overlapping_confirmed, release_redis_db
from worker.arq_ext import CLAIM_SCRIPT, ClaimingWorker
from worker.jobs import announce, retry_or_fail
from worker.lock import DoctorLock


async def decision(client: httpx.AsyncClient, patient: User, request_id: int, wait: int = 20) -> dict:
    response = await client.get(f"/booking-requests/{request_id}", params={"wait": wait}, headers=patient.headers)
    assert response.status_code == 200, response.text
    return response.json()


def rows(mysql: pymysql.Connection, sql: str, *args: object) -> list[dict]:
    with mysql.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


async def jobs_done(arq_redis: ArqRedis, job_ids: list[str], timeout: float = 10) -> None:
    """Until each of these jobs has run: neither queued nor in progress."""
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while (await arq_redis.zscore("arq:queue", job_id) is not None
               or await arq_redis.exists(f"arq:in-progress:{job_id}")):
            assert time.monotonic() < deadline, f"job {job_id} did not run"
            await asyncio.sleep(0.02)


@pytest.fixture
async def arq_redis(settings: Settings) -> ArqRedis:
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    yield pool
    await pool.aclose()


# --- the decision itself, without I/O -------------------------------------------------------------------------

def test_decide_checks_past_window_doctor_then_patient_in_request_order() -> None:
    t = datetime(2030, 1, 1, 10)
    h = timedelta(hours=1)
    requests = [
        PendingRequest(1, patient_id=7, start_time=t, end_time=t + h, notes=None),
        PendingRequest(2, patient_id=8, start_time=t + h / 2, end_time=t + 1.5 * h, notes=None),  # overlaps 1
        PendingRequest(3, patient_id=8, start_time=t + h, end_time=t + 2 * h, notes=None),  # back-to-back: fine
        PendingRequest(4, patient_id=9, start_time=t + 5 * h, end_time=t + 6 * h, notes=None),  # no window
        PendingRequest(5, patient_id=9, start_time=t - 9 * h, end_time=t - 8 * h, notes=None),  # past
        PendingRequest(6, patient_id=7, start_time=t + 2 * h, end_time=t + 3 * h, notes=None),  # 7 busy elsewhere
    ]
    decisions = decide(
        requests,
        DoctorTime([Available(t - 10 * h, t - 7 * h, 2), Available(t, t + 4 * h, 1)], taken=[]),
        patients={7: Taken([(t + 2.5 * h, t + 3.5 * h)])},
        now=t - h,
    )
    assert decisions == [  # each confirmation and slot_taken shows its span taken to every API process
        Decision(1, "confirmed", taken=(t, t + h, None)),
        Decision(2, "rejected", SLOT_TAKEN, taken=(t + h / 2, t + 1.5 * h, None)),
        Decision(3, "confirmed", taken=(t + h, t + 2 * h, None)),
        Decision(4, "rejected", OUTSIDE_AVAILABILITY), Decision(5, "rejected", IN_PAST),
        Decision(6, "rejected", PATIENT_BUSY),
    ]


# --- the seed's walkthrough -----------------------------------------------------------------------------------

async def test_walkthrough(client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection) -> None:
    doctor, alice, bob = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(17))

    # Book: 202 with a status URL, then the decision.
    response = await factory.book(alice, doctor["id"], at(10), at(11))
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "pending"
    assert response.headers["location"] == accepted["status_url"] == f"/booking-requests/{accepted['request_id']}"
    first = await decision(client, alice, accepted["request_id"])
    assert first["status"] == "confirmed" and first["appointment_id"] and first["reason"] is None

    # An overlapping request is rejected with slot_taken.
    response = await factory.book(bob, doctor["id"], at(10.5), at(11.5), wait=10)
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["reason"] == SLOT_TAKEN

    # Back-to-back is allowed (half-open intervals).
    back_to_back = await factory.booked(bob, doctor["id"], at(11), at(12))
    assert back_to_back["status"] == "confirmed"

    # A doctor cannot book.
    assert (await factory.book(doctor, doctor["id"], at(13), at(14))).status_code == 403

    # A patient cannot cancel (or even see) another's appointment.
    other = await client.delete(f"/appointments/{first['appointment_id']}", headers=bob.headers)
    assert other.status_code == 404
    assert (await client.get(f"/appointments/{first['appointment_id']}", headers=bob.headers)).status_code == 404

    # Cancelling frees the slot at once.
    cancelled = await client.delete(f"/appointments/{first['appointment_id']}", headers=alice.headers)
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["cancelled_by"] == alice["id"] and body["cancelled_at"]
    again = await client.delete(f"/appointments/{first['appointment_id']}", headers=alice.headers)
    assert again.status_code == 200 and again.json() == body
    rebooked = await factory.booked(bob, doctor["id"], at(10), at(11))
    assert rebooked["status"] == "confirmed"
    no_overlapping_confirmed(mysql)


async def test_rejections_name_their_reason(client: httpx.AsyncClient, factory: Factory) -> None:
    doctor_a, doctor_b, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    await factory.window(doctor_a, at(9), at(12))
    await factory.window(doctor_b, at(9), at(12))
    await factory.booked(patient, doctor_a["id"], at(10), at(11))

    busy = await factory.book(patient, doctor_b["id"], at(10.5), at(11.5), wait=10)
    assert busy.status_code == 409 and busy.json()["reason"] == PATIENT_BUSY
    outside = await factory.book(patient, doctor_b["id"], at(11.5), at(12.5), wait=10)
    assert outside.status_code == 409 and outside.json()["reason"] == OUTSIDE_AVAILABILITY
    spanning_two_days = await factory.book(patient, doctor_b["id"], at(8), at(9.5), wait=10)
    assert spanning_two_days.json()["reason"] == OUTSIDE_AVAILABILITY


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"doctor_id": "one"}, "doctor_id"),
        ({"doctor_id": 0}, "doctor_id"),
        ({"start_time": "tomorrow"}, "start_time"),
        ({"end_time": None}, "end_time"),
        ({"notes": "x" * 2001}, "notes"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_booking_bodies_name_the_field(
    client: httpx.AsyncClient, factory: Factory, body: dict, field: str
) -> None:
    patient = await factory.patient()
    valid = {"doctor_id": 1, "start_time": iso(at(10)), "end_time": iso(at(11))}
    response = await client.post("/appointments", json=valid | body, headers=patient.headers)
    assert response.status_code == 400
    assert field in response.text


async def test_time_rules_of_a_booking(client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    cases = [
        (at(11), at(10), "end_time"),  # end before start
        (at(10), at(10), "end_time"),  # empty
        (at(-60, offset=0), at(-59, offset=0), "start_time"),  # in the past
        (at(9), at(17.01), "end_time"),  # longer than 8 hours
    ]
    for start, end, field in cases:
        response = await factory.book(patient, doctor["id"], start, end)
        assert response.status_code == 400, (start, end, response.text)
        assert response.json()["errors"][0]["field"] == field
    missing = await factory.book(patient, 999_999, at(10), at(11))
    assert missing.status_code == 404
    assert rows(mysql, "SELECT id FROM booking_requests") == []


# --- races: many API processes, many workers ------------------------------------------------------------------

async def race(
    factory: Factory, apis: list[str], slots: list[tuple[datetime, datetime]], patients_count: int = 50
) -> Counter:
    doctor = await factory.doctor()
    await factory.window(doctor, at(8), at(16))
    patients = await asyncio.gather(*(factory.patient() for _ in range(patients_count)))
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for url in apis]
    try:
        submitted = await asyncio.gather(*(
            factory.book(p, doctor["id"], *slots[i % len(slots)], client=clients[i % len(clients)])
            for i, p in enumerate(patients)
        ))
        # Each is stored (202) and decided by a worker, or refused at once for a time its API process heard taken.
        refused = [r.json() for r in submitted if r.status_code == 409]
        assert all(r.status_code == 202 for r in submitted if r.status_code != 409)
        assert all(r["reason"] == SLOT_TAKEN and "request_id" not in r for r in refused), refused
        decided = await asyncio.gather(*(
            decision(clients[i % len(clients)], p, r.json()["request_id"])
            for i, (p, r) in enumerate(zip(patients, submitted, strict=True)) if r.status_code == 202
        ))
    finally:
        for c in clients:
            await c.aclose()
    return Counter((d["status"], d["reason"]) for d in [*decided, *({**r, "status": "rejected"} for r in refused)])


async def test_fifty_requests_for_one_slot_confirm_exactly_one(
    factory: Factory, stack: dict, mysql: pymysql.Connection
) -> None:
    outcome = await race(factory, stack["apis"], [(at(10), at(11))])
    assert outcome == {("confirmed", None): 1, ("rejected", SLOT_TAKEN): 49}
    assert rows(mysql, "SELECT COUNT(*) AS n FROM appointments WHERE status = 'confirmed'")[0]["n"] == 1
    no_overlapping_confirmed(mysql)


async def test_partial_overlaps_confirm_one(factory: Factory, stack: dict, mysql: pymysql.Connection) -> None:
    outcome = await race(factory, stack["apis"], [(at(10), at(11)), (at(10.5), at(11.5))], patients_count=20)
    assert outcome == {("confirmed", None): 1, ("rejected", SLOT_TAKEN): 19}
    no_overlapping_confirmed(mysql)


@pytest.fixture
def workers_without_redis_lock(stack: dict, processes: Processes) -> Iterator[None]:
    """Swap the shared workers for three that skip the Redis lock: MySQL's row lock alone must hold."""
    for worker in stack["workers"]:
        processes.stop(worker)
    unlocked = [processes.start_worker({"BOOKING_REDIS_LOCK": "false", "BOOKING_BATCH_SIZE": "1"})
                for _ in range(3)]
    yield
    for worker in unlocked:
        processes.stop(worker)
    stack["workers"] = [processes.start_worker() for _ in range(3)]


async def test_without_the_redis_lock_still_exactly_one(
    factory: Factory, stack: dict, workers_without_redis_lock: None, mysql: pymysql.Connection
) -> None:
    outcome = await race(factory, stack["apis"], [(at(10), at(11)), (at(10.5), at(11.5))])
    assert outcome == {("confirmed", None): 1, ("rejected", SLOT_TAKEN): 49}
    no_overlapping_confirmed(mysql)


async def test_one_patient_racing_two_doctors_is_booked_once(
    factory: Factory, stack: dict, mysql: pymysql.Connection
) -> None:
    doctors = [await factory.doctor() for _ in range(5)]
    for doctor in doctors:
        await factory.window(doctor, at(8), at(16))
    patient = await factory.patient()
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for url in stack["apis"]]
    try:
        submitted = await asyncio.gather(*(
            factory.book(patient, d["id"], at(10), at(11), client=clients[i % 2]) for i, d in enumerate(doctors)
        ))
        decided = [await decision(clients[0], patient, r.json()["request_id"]) for r in submitted]
    finally:
        for c in clients:
            await c.aclose()
    assert Counter(d["status"] for d in decided) == {"confirmed": 1, "rejected": 4}
    assert {d["reason"] for d in decided if d["status"] == "rejected"} == {PATIENT_BUSY}
    no_overlapping_confirmed(mysql)


# --- idempotency, at-least-once, the sweep --------------------------------------------------------------------

async def test_idempotency_key_replays_the_first_request(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.doctor(), await factory.patient()
    patient = await factory.patient()
    await factory.window(doctor, at(9), at(12))
    key = {"Idempotency-Key": "b3f1c2d4-retry-me"}
    first, second = await asyncio.gather(factory.book(patient, doctor["id"], at(10), at(11), **key),
                                         factory.book(patient, doctor["id"], at(10), at(11), **key))
    assert first.status_code == second.status_code == 202
    assert first.json()["request_id"] == second.json()["request_id"]
    decided = await decision(client, patient, first.json()["request_id"])
    assert decided["status"] == "confirmed"
    third = await factory.book(patient, doctor["id"], at(10), at(11), **key)
    assert third.json()["request_id"] == first.json()["request_id"]
    assert third.json()["status"] == "confirmed"

    different = await factory.book(patient, doctor["id"], at(10.5), at(11), **key)
    assert different.status_code == 409
    # Keys belong to one patient: another patient's same key is a new request.
    theirs = await factory.book(other, doctor["id"], at(11), at(12), **key)
    assert theirs.status_code == 202 and theirs.json()["request_id"] != first.json()["request_id"]
    mine = rows(mysql, "SELECT COUNT(*) AS n FROM booking_requests WHERE patient_id = %s", patient["id"])
    assert mine[0]["n"] == 1
    assert rows(mysql, "SELECT COUNT(*) AS n FROM appointments WHERE patient_id = %s", patient["id"])[0]["n"] == 1


async def test_running_the_job_again_changes_nothing(
    client: httpx.AsyncClient, factory: Factory, arq_redis: ArqRedis, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(11))
    before = rows(mysql, "SELECT * FROM booking_requests")
    redeliveries = [f"redelivery-{run}" for run in range(3)]
    for job_id in redeliveries:  # at-least-once delivery: the same job, delivered again
        assert await arq_redis.enqueue_job("book_appointment", appointment["booking_request_id"], doctor["id"],
                                           _job_id=job_id)
    await jobs_done(arq_redis, redeliveries)
    assert rows(mysql, "SELECT * FROM booking_requests") == before
    assert len(rows(mysql, "SELECT id FROM appointments")) == 1


async def test_each_queued_job_is_started_by_exactly_one_of_the_racing_workers(
    stack: dict, arq_redis: ArqRedis
) -> None:
    """The workers claim jobs with one script a poll (worker/claim.py) instead of arq's WATCH … MULTI: still every
    job runs, and runs once, however the three workers race for them."""
    job_ids = [f"claim-{uuid.uuid4().hex}" for _ in range(60)]
    for job_id in job_ids:  # requests that do not exist: each job only looks and ends
        assert await arq_redis.enqueue_job("book_appointment", 2**40, _job_id=job_id)
    await jobs_done(arq_redis, job_ids)
    logs = "".join(log_of(worker).read_text() for worker in stack["workers"])
    starts = Counter(line.split("→ ", 1)[1].split(":", 1)[0] for line in logs.splitlines()
                     if "→ claim-" in line)
    assert starts == dict.fromkeys(job_ids, 1)


async def test_the_sweep_decides_a_request_whose_job_was_lost(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    with mysql.cursor() as cursor:  # stored, but its job never reached the queue
        cursor.execute(
            "INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (patient["id"], doctor["id"], at(10).replace(tzinfo=None), at(11).replace(tzinfo=None), utcnow()),
        )
        request_id = cursor.lastrowid
    decided = await decision(client, patient, request_id, wait=15)
    assert decided["status"] == "confirmed"


async def test_a_request_decided_in_the_past_is_rejected_in_past(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    with mysql.cursor() as cursor:  # e.g. a request that waited out an outage until its time had passed
        start = utcnow() - timedelta(hours=1)
        cursor.execute(
            "INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (patient["id"], doctor["id"], start, start + timedelta(minutes=30), start - timedelta(days=1)),
        )
        request_id = cursor.lastrowid
    decided = await decision(client, patient, request_id, wait=15)
    assert (decided["status"], decided["reason"]) == ("rejected", IN_PAST)


# --- reading: status, long polling, lists, object-level authorization -----------------------------------------

async def test_long_polling_answers_within_milliseconds_of_the_decision(
    client: httpx.AsyncClient, factory: Factory, arq_redis: ArqRedis, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    with mysql.cursor() as cursor:
        cursor.execute(
            "INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (patient["id"], doctor["id"], at(10).replace(tzinfo=None), at(11).replace(tzinfo=None), utcnow()),
        )
        request_id = cursor.lastrowid
    poll = asyncio.create_task(decision(client, patient, request_id, wait=20))
    await asyncio.sleep(0.5)
    assert not poll.done()
    await arq_redis.enqueue_job("book_appointment", request_id, doctor["id"], _job_id=f"booking:{request_id}")
    decided = await poll
    answered_at = utcnow()
    decided_at = datetime.fromisoformat(decided["decided_at"]).replace(tzinfo=None)
    assert decided["status"] == "confirmed"
    assert (answered_at - decided_at) < timedelta(milliseconds=100)
    # The answer came from the worker's message, not a read: it must say what MySQL holds.
    [stored] = rows(mysql, "SELECT id FROM appointments WHERE booking_request_id = %s", request_id)
    assert decided["appointment_id"] == stored["id"]


async def test_prefer_wait_gives_the_synchronous_answer(client: httpx.AsyncClient, factory: Factory) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    started = time.monotonic()
    response = await factory.book(patient, doctor["id"], at(10), at(11), wait=10)
    assert response.status_code == 201
    assert time.monotonic() - started < 5
    appointment = response.json()
    assert response.headers["location"] == f"/appointments/{appointment['id']}"
    assert appointment["status"] == "confirmed" and appointment["patient_id"] == patient["id"]


async def test_booking_requests_are_visible_only_to_their_patient(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    doctor, alice, bob = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    submitted = (await factory.book(alice, doctor["id"], at(10), at(11))).json()
    own = await client.get(submitted["status_url"], headers=alice.headers)
    assert own.status_code == 200 and own.json()["request_id"] == submitted["request_id"]
    assert (await client.get(submitted["status_url"], headers=bob.headers)).status_code == 404
    assert (await client.get(submitted["status_url"], headers=doctor.headers)).status_code == 404
    assert (await client.get("/booking-requests", headers=doctor.headers)).status_code == 403
    assert (await client.get(submitted["status_url"])).status_code == 401
    listed = (await client.get("/booking-requests", headers=alice.headers)).json()
    assert listed["total"] == 1 and listed["items"][0]["request_id"] == submitted["request_id"]
    assert (await client.get("/booking-requests", headers=bob.headers)).json()["total"] == 0


async def test_appointments_seen_by_patient_and_doctor_and_cancelled_by_doctor_with_reason(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    doctor, patient, stranger = await factory.doctor(), await factory.patient(), await factory.doctor()
    await factory.window(doctor, at(9), at(12))
    first = await factory.booked(patient, doctor["id"], at(9), at(10))
    second = await factory.booked(patient, doctor["id"], at(10), at(11))
    for user in (patient, doctor):
        assert (await client.get(f"/appointments/{first['id']}", headers=user.headers)).status_code == 200
        mine = (await client.get("/appointments/my-appointments", headers=user.headers)).json()
        assert [a["id"] for a in mine["items"]] == [first["id"], second["id"]] and mine["total"] == 2
    assert (await client.get(f"/appointments/{first['id']}", headers=stranger.headers)).status_code == 404
    assert (await client.delete(f"/appointments/{first['id']}", headers=stranger.headers)).status_code == 404

    no_reason = await client.delete(f"/appointments/{first['id']}", headers=doctor.headers)
    assert no_reason.status_code == 400 and no_reason.json()["errors"][0]["field"] == "reason"
    cancelled = await client.delete(f"/appointments/{first['id']}", params={"reason": "Called in sick"},
                                    headers=doctor.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["cancelled_by"] == doctor["id"]
    assert cancelled.json()["cancel_reason"] == "Called in sick"
    confirmed_only = (await client.get("/appointments/my-appointments", params={"status": "confirmed"},
                                       headers=patient.headers)).json()
    assert [a["id"] for a in confirmed_only["items"]] == [second["id"]]
    in_range = (await client.get("/appointments/my-appointments", headers=patient.headers,
                                 params={"from": iso(at(9.5)), "to": iso(at(12))})).json()
    assert [a["id"] for a in in_range["items"]] == [first["id"], second["id"]]
    paged = (await client.get("/appointments/my-appointments", headers=patient.headers,
                              params={"limit": 1, "offset": 1})).json()
    assert [a["id"] for a in paged["items"]] == [second["id"]] and paged["total"] == 2


@pytest.fixture
async def bare_redis() -> AsyncIterator[ArqRedis]:
    """A Redis DB of its own, with no worker on it: what is queued stays there."""
    server = "redis://127.0.0.1:6379"
    number = claim_redis_db(server)
    redis = ArqRedis.from_url(f"{server}/{number}")
    try:
        yield redis
    finally:
        await redis.aclose()
        release_redis_db(server, number)


async def test_a_queued_job_of_a_doctor_takes_in_the_doctors_new_requests_until_it_starts(
    bare_redis: ArqRedis,
) -> None:
    assert await enqueue_booking(bare_redis, 7, doctor_id=1)
    assert not await enqueue_booking(bare_redis, 8, doctor_id=1)  # booking:7 will decide it
    assert await enqueue_booking(bare_redis, 9, doctor_id=2)  # another doctor's: a job of its own
    assert await enqueue_booking(bare_redis, 8, doctor_id=1, fold=False)  # the sweep queues it whatever
    await bare_redis.delete(queued_marker_key(1))  # what a starting job does before it reads
    assert await enqueue_booking(bare_redis, 10, doctor_id=1)
    assert not await enqueue_booking(bare_redis, 10, doctor_id=1, fold=False)  # its own job is queued already
    queued = {job_id.decode() for job_id in await bare_redis.zrange("arq:queue", 0, -1)}
    assert queued == {"booking:7", "booking:9", "booking:8", "booking:10"}
    job = deserialize_job(await bare_redis.get("arq:job:booking:7"))  # arq's own format
    assert (job.function, job.args, job.kwargs) == ("book_appointment", (7, 1), {})
    assert 0 < await bare_redis.pttl(queued_marker_key(1)) <= QUEUED_MARKER_MS


async def test_decisions_are_published_with_their_outcome_and_empty_ones_not_at_all(bare_redis: ArqRedis) -> None:
    decided = Decided(3, utcnow(), [Decision(7, "confirmed", None, 70), Decision(8, "rejected", SLOT_TAKEN)])
    async with bare_redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(channel(bare_redis, DECISIONS))
        await publish_decisions(bare_redis, Decided(3, utcnow(), []))
        await publish_decisions(bare_redis, decided)
        messages = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:  # None also stands for the (ignored) subscribe confirmation
            if (message := await pubsub.get_message(timeout=0.1)) is not None:
                messages.append(message["data"])
    assert [read_decided_message(m) for m in messages] == [decided]


@pytest.fixture
async def listener(bare_redis: ArqRedis) -> AsyncIterator[Notifications]:
    """An API process's pub/sub listener, subscribed, on a Redis DB of its own."""
    notifications = Notifications(bare_redis, users=UserCache(0), schedule=ScheduleVersions())
    notifications.start()
    deadline = time.monotonic() + 5
    while (await bare_redis.pubsub_numsub(channel(bare_redis, DECISIONS)))[0][1] == 0:
        assert time.monotonic() < deadline, "the listener did not subscribe"
        await asyncio.sleep(0.02)
    yield notifications
    await notifications.stop()


def pending_row(request_id: int, patient_id: int = 1, requested_by: int | None = None) -> dict:
    """A booking request as POST /appointments stores it (and Notifications.remember keeps it)."""
    now = utcnow()
    return {"id": request_id, "patient_id": patient_id, "requested_by": requested_by, "doctor_id": 3,
            "appointment_type_id": None, "start_time": now, "end_time": now, "kind": "book", "reschedules": None,
            "hold_id": None,
            "notes": None, "status": "pending", "reason": None, "appointment_id": None, "created_at": now,
            "decided_at": None}


async def test_a_poll_in_the_process_that_stored_the_request_needs_no_read(
    bare_redis: ArqRedis, listener: Notifications
) -> None:
    """Notifications keeps the requests its process stored as the decisions messages say they stand, a decision
    that beat `remember` included; MySQL is read only for others' requests or another patient's."""
    reads: list[int] = []

    async def read_from_mysql(request_id: int) -> dict:
        reads.append(request_id)
        return {**pending_row(request_id), "status": "from mysql"}

    # Decided before `remember`: kept aside, then applied.
    now = utcnow()
    await publish_decisions(bare_redis, Decided(3, now, [Decision(11, "confirmed", None, 110)]))
    await asyncio.sleep(0.2)
    listener.remember(pending_row(11))
    early = await listener.wait_for_decision(11, 1, partial(read_from_mysql, 11), timeout=1)
    assert (early["status"], early["appointment_id"], early["decided_at"]) == ("confirmed", 110, now)

    # Remembered while pending: the poll waits for the message, not for MySQL.
    listener.remember(pending_row(12))
    poll = asyncio.create_task(listener.wait_for_decision(12, 1, partial(read_from_mysql, 12), timeout=5))
    await asyncio.sleep(0.1)
    assert not poll.done()
    await publish_decisions(bare_redis, Decided(3, now, [Decision(12, "rejected", SLOT_TAKEN)]))
    assert ((await poll)["status"], (await poll)["reason"]) == ("rejected", SLOT_TAKEN)
    assert reads == []

    # Another patient's, or one this process never stored: MySQL decides (and 404s what is not theirs).
    assert (await listener.wait_for_decision(12, 2, partial(read_from_mysql, 12), 0))["status"] == "from mysql"
    assert (await listener.wait_for_decision(13, 1, partial(read_from_mysql, 13), 0))["status"] == "from mysql"
    assert reads == [12, 13]

    # Booked by staff (user 5) for patient 1: each of the two is answered from memory; anyone else from MySQL.
    listener.remember(pending_row(14, 1, requested_by=5))
    await publish_decisions(bare_redis, Decided(3, now, [Decision(14, "confirmed", None, 140)]))
    await asyncio.sleep(0.2)
    for user_id in (1, 5):
        assert (await listener.wait_for_decision(14, user_id, partial(read_from_mysql, 14), 0))["status"] == "confirmed"
    assert (await listener.wait_for_decision(14, 6, partial(read_from_mysql, 14), 0))["status"] == "from mysql"
    assert reads == [12, 13, 14]


async def test_deployments_sharing_a_redis_server_do_not_hear_each_other(listener: Notifications) -> None:
    """Pub/sub spans a server's databases; request ids do not (each deployment has its own MySQL): a decision
    published by a deployment on another Redis database must not answer ours."""
    server = "redis://127.0.0.1:6379"
    other_number = claim_redis_db(server)
    other = ArqRedis.from_url(f"{server}/{other_number}")
    try:
        row = pending_row(31)
        listener.remember(row)

        async def still_pending() -> dict:
            return row

        await publish_decisions(other, Decided(3, utcnow(), [Decision(31, "confirmed", None, 310)]))
        assert (await listener.wait_for_decision(31, 1, still_pending, timeout=0.3))["status"] == "pending"
    finally:
        await other.aclose()
        release_redis_db(server, other_number)


async def test_a_remembered_pending_request_is_checked_in_mysql_when_no_decision_comes(
    listener: Notifications,
) -> None:
    """A decision can be lost between commit and publish (a worker killed there): a poll that started from
    memory reads MySQL after a second, and a poll that will not wait reads MySQL at once."""
    pending = pending_row(41)
    listener.remember(pending)

    async def decided_in_mysql() -> dict:
        return {**pending, "status": "confirmed", "appointment_id": 410, "decided_at": utcnow()}

    assert (await listener.wait_for_decision(41, 1, decided_in_mysql, timeout=0))["status"] == "confirmed"
    started = time.monotonic()
    assert (await listener.wait_for_decision(41, 1, decided_in_mysql, timeout=20))["status"] == "confirmed"
    assert 0.9 < time.monotonic() - started < 5


async def test_failing_a_request_another_job_decided_meanwhile_changes_and_announces_nothing(
    db: Database, bare_redis: ArqRedis, factory: Factory, mysql: pymysql.Connection
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(11))
    request_id = appointment["booking_request_id"]
    before = rows(mysql, "SELECT * FROM booking_requests WHERE id = %s", request_id)
    ctx = {"db": db, "redis": bare_redis, "job_try": 5}
    async with bare_redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(channel(bare_redis, DECISIONS))
        result = await retry_or_fail(ctx, request_id, doctor["id"], RuntimeError("lock wait"), last_try=True)
        assert result == "already decided"
        assert await pubsub.get_message(timeout=0.3) is None
    assert rows(mysql, "SELECT * FROM booking_requests WHERE id = %s", request_id) == before


async def test_the_claim_skips_running_jobs_and_takes_no_more_than_it_has_room_for(bare_redis: ArqRedis) -> None:
    claim = bare_redis.register_script(CLAIM_SCRIPT)
    now = int(time.time() * 1000)
    await bare_redis.zadd("arq:queue", {"running": now - 30, "due-1": now - 20, "due-2": now - 10,
                                        "later": now + 60_000})
    await bare_redis.set("arq:in-progress:running", b"1")
    ids = ["running", "due-1", "due-2", "later"]

    async def claim_up_to(room: int) -> list[bytes]:
        claimed = await claim(keys=["arq:queue", *(f"arq:in-progress:{i}" for i in ids)],
                              args=[now, 70_000, room, *ids])
        return claimed[::2]

    assert await claim_up_to(1) == [b"due-1"]  # past the running one, and only one
    assert await claim_up_to(5) == [b"due-2"]  # not the running ones, not the one due later
    assert await claim_up_to(5) == []
    assert 0 < await bare_redis.pttl("arq:in-progress:due-2") <= 70_000



async def test_a_worker_never_claims_a_job_it_is_running(bare_redis: ArqRedis) -> None:
    """A running job stays queued, so each poll reads it again: the worker running it leaves it out of the claim,
    even if its lease lapsed meanwhile (a second run of it in the same worker would gain nothing), and a poll that
    finds only its own running jobs makes no round trip. A job that ended is claimable again under its id."""
    async def job(ctx: dict[str, Any]) -> None: ...
    worker = ClaimingWorker(functions=[func(job, name="job")], redis_pool=bare_redis, max_jobs=10,
                            handle_signals=False)
    now = int(time.time() * 1000)
    await bare_redis.zadd("arq:queue", {"mine": now - 10})  # its in-progress mark (lease) has lapsed
    running = asyncio.get_running_loop().create_future()
    worker.tasks["mine"] = running  # type: ignore[assignment]
    await worker.start_jobs([b"mine"])
    assert worker.tasks["mine"] is running and worker.job_counter == 0
    assert await bare_redis.exists("arq:in-progress:mine") == 0  # not claimed

    running.set_result(None)  # it ended, and was queued again under its id
    await worker.start_jobs([b"mine"])
    assert worker.tasks["mine"] is not running and await bare_redis.exists("arq:in-progress:mine") == 1
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)

def test_the_requests_a_process_remembers_are_those_of_the_last_minute() -> None:
    """Memory follows the booking rate, not the process's age: a request stored over a minute before the newest is
    forgotten (its polls read MySQL), as is the oldest past RECENT_REQUESTS."""
    notifications = Notifications(None, users=UserCache(0), schedule=ScheduleVersions())  # type: ignore[arg-type]
    old, recent = pending_row(1), pending_row(2)
    old["created_at"] -= timedelta(seconds=61)
    recent["created_at"] -= timedelta(seconds=59)
    notifications.remember(old)
    notifications.remember(recent)
    assert list(notifications._recent) == [1, 2]
    notifications.remember(pending_row(3))
    assert list(notifications._recent) == [2, 3]


async def test_a_decision_locks_only_the_pending_requests_it_decides_however_many_wait(
    db: Database, mysql: pymysql.Connection,
) -> None:
    """A decision's first read (the doctor's lock and the oldest pending requests) follows the (doctor, status, id)
    index: with hundreds of requests pending, for this doctor and another, it locks the doctor, the batch's requests
    and their types, not every pending request it could have scanned (the rush's 500 a doctor did, 4.5 ms each)."""
    now = utcnow()
    later = now + timedelta(days=300)
    with mysql.cursor() as cursor:
        doctors, patients = [], []
        for _ in range(2):
            for role, ids in (("Doctor", doctors), ("Patient", patients)):
                cursor.execute("INSERT INTO users (email, name, role, password_hash, created_at)"
                               " VALUES (%s, %s, %s, 'x', %s)",
                               (f"lock-{uuid.uuid4().hex}@example.com", role, role, now))
                ids.append(cursor.lastrowid)
        cursor.execute("INSERT INTO appointment_types (doctor_id, name, duration_minutes, created_at, updated_at)"
                       " VALUES (%s, 'Visit', 30, %s, %s)", (doctors[0], now, now))
        type_id = cursor.lastrowid
        # Stored straight into MySQL and fresh: no job decides them, and the sweep leaves them for now.
        cursor.executemany(
            "INSERT INTO booking_requests (patient_id, doctor_id, appointment_type_id, start_time, end_time,"
            " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
            [(patients[k % 2], doctors[k % 2], type_id if k % 2 == 0 else None, later + timedelta(hours=k),
              later + timedelta(hours=k, minutes=30), now) for k in range(400)])
        cursor.execute("SELECT MIN(id) AS first FROM booking_requests WHERE doctor_id = %s", (doctors[0],))
        oldest = cursor.fetchone()["first"]
    try:
        async with db.transaction() as tx:
            params = {"doctor_id": doctors[0], "limit": 2}
            doctor, pending = await tx.fetch_batch([("lock_doctor", params),
                                                    ("lock_pending_requests_of_doctor", params)])
            assert [row["id"] for row in doctor] == [doctors[0]]
            assert [row["id"] for row in pending] == [oldest, oldest + 2]
            assert {row["type_id"] for row in pending} == {type_id}
            # InnoDB refreshes innodb_trx's snapshot when it is over 0.1 s old: one taken by another test just
            # before these locks would show this transaction with fewer rows locked, or not at all.
            await asyncio.sleep(0.11)
            async with tx.raw.cursor() as cursor:
                await cursor.execute("SELECT trx_rows_locked FROM information_schema.innodb_trx"
                                     " WHERE trx_mysql_thread_id = CONNECTION_ID()")
                [(locked,)] = await cursor.fetchall()
            # The doctor, the 2 requests (index entry and row), their type: a handful, not the 200 pending.
            assert locked <= 10, f"{locked} rows locked for a batch of 2"
            raise LookupError("roll back")
    except LookupError:
        pass
    finally:
        with mysql.cursor() as cursor:
            cursor.execute("DELETE FROM booking_requests WHERE doctor_id IN %s", (tuple(doctors),))
            cursor.execute("DELETE FROM appointment_types WHERE id = %s", (type_id,))
            cursor.execute("DELETE FROM users WHERE id IN %s", (tuple(doctors + patients),))


async def test_after_its_commit_a_job_releases_announces_and_asks_for_delivery_in_one_round_trip(
    bare_redis: ArqRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    """worker/jobs.py's announce: the doctor's lock released (only if still ours), the decisions published to the
    API processes, a dispatch job queued (folded into one already waiting), all in one pipeline."""
    decided = Decided(5, utcnow(), [Decision(41, "confirmed", appointment_id=9)])
    pubsub = bare_redis.pubsub()
    await pubsub.subscribe(channel(bare_redis, DECISIONS))
    await pubsub.get_message(timeout=1)  # the subscription's own reply
    lock = DoctorLock(bare_redis, 5, 10_000)
    assert await lock.acquire(0.1)
    calls: list[object] = []
    original = type(bare_redis).pipeline

    def counting_pipeline(self: ArqRedis, *args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(bare_redis), "pipeline", counting_pipeline)
        await announce(bare_redis, lock, decided, dispatch=True)
    assert len(calls) == 1
    assert not await bare_redis.exists(lock.key)
    message = await pubsub.get_message(timeout=2)
    assert read_decided_message(message["data"]) == decided
    [dispatch] = [job.decode() for job in await bare_redis.zrange("arq:queue", 0, -1)]
    assert dispatch.startswith("outbox:") and await bare_redis.exists("outbox:dispatch-queued")
    await announce(bare_redis, None, decided, dispatch=True)  # without a lock; the waiting dispatch job suffices
    assert len(await bare_redis.zrange("arq:queue", 0, -1)) == 1
    assert read_decided_message((await pubsub.get_message(timeout=2))["data"]) == decided

    # A lock that lapsed and went to another holder is left to it, and said.
    lock = DoctorLock(bare_redis, 6, 10_000)
    await bare_redis.set(lock.key, "someone else's")
    with caplog.at_level("WARNING", logger="worker"):
        await announce(bare_redis, lock, Decided(6, utcnow(), []), dispatch=False)
    assert await bare_redis.get(lock.key) == b"someone else's"
    assert "expired before the booking finished" in caplog.text
    await pubsub.aclose()
