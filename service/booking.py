"""The booking decision: run by the worker, under the doctor's row lock, in one transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import msgspec
from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from service.channels import DECISIONS, channel
from service.db import RETRYABLE_ERRORS, Connection, Database, mysql_error_code
from service.faults import fault_point
from service.times import overlaps, utcnow

log = logging.getLogger("service.booking")

BOOK_JOB = "book_appointment"

# Machine-readable reasons a request is rejected or failed.
SLOT_TAKEN = "slot_taken"
OUTSIDE_AVAILABILITY = "outside_availability"
PATIENT_BUSY = "patient_busy"
DOCTOR_NOT_FOUND = "doctor_not_found"
IN_PAST = "in_past"
RETRIES_EXHAUSTED = "retries_exhausted"


def booking_job_id(request_id: int) -> str:
    """arq's job id for a request: enqueueing it again while it is queued or running is a no-op."""
    return f"booking:{request_id}"


def queued_marker_key(doctor_id: int) -> str:
    """Set while a booking job of this doctor waits in the queue and has not yet started reading."""
    return f"booking:queued:{doctor_id}"


# What arq's enqueue_job does (skip if the job or its result exists, store the job, add it to the queue), in one
# atomic round trip instead of its four (WATCH, EXISTS, MULTI … EXEC): this sits on every POST /appointments.
#
# Plus folding: a job decides every pending request of its doctor, so while one of the doctor's jobs is queued and
# not yet started (its marker is set), a new request needs no job of its own: it was committed before this
# script ran, so before that job deletes the marker and reads (jobs.py). Under load this turns many jobs into one
# batch. ARGV[5] = '0' (the sweep) queues the request's own job whatever the marker says.
ENQUEUE_SCRIPT = """
if ARGV[5] == '1' and redis.call('exists', KEYS[4]) == 1 then return 0 end
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
redis.call('psetex', KEYS[4], ARGV[6], ARGV[4])
return 1
"""
JOB_EXPIRES_MS = 24 * 3600 * 1000  # as arq: a job not started within a day is dropped (the sweep re-queues)
# A marker outliving its job (say the job's worker died before starting it) only holds new requests back from
# queueing their own until it lapses; the sweep decides them meanwhile.
QUEUED_MARKER_MS = 30_000


@cache
def _enqueue_script(redis: Redis) -> AsyncScript:
    return redis.register_script(ENQUEUE_SCRIPT)


async def enqueue_booking(redis: Redis, request_id: int, doctor_id: int, *, fold: bool = True) -> bool:
    """Queue the decision of a stored request. False if no job was added: a queued job of its doctor will
    decide it (`fold`), its own job is queued already (arq dedupes by job id), or Redis is out of reach (with a
    log line).

    The request is safe in MySQL either way: the sweep queues whatever stays pending.
    """
    job_id = booking_job_id(request_id)
    now_ms = int(time.time() * 1000)
    job = serialize_job(BOOK_JOB, (request_id, doctor_id), {}, None, now_ms)
    try:
        queued = await _enqueue_script(redis)(
            keys=[job_key_prefix + job_id, result_key_prefix + job_id, default_queue_name,
                  queued_marker_key(doctor_id)],
            args=[JOB_EXPIRES_MS, job, now_ms, job_id, int(fold), QUEUED_MARKER_MS],
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("could not queue booking request %s (the sweep will): %r", request_id, exc)
        return False
    return bool(queued)


@dataclass(slots=True)
class PendingRequest:
    id: int
    patient_id: int
    start_time: datetime
    end_time: datetime
    notes: str | None


class Decision(msgspec.Struct, array_like=True, gc=False):
    request_id: int
    status: str  # confirmed | rejected | failed
    reason: str | None = None
    appointment_id: int | None = None


class Decided(msgspec.Struct, array_like=True, gc=False):
    """One transaction's decisions: what the worker publishes once they are committed."""

    doctor_id: int
    decided_at: datetime
    decisions: list[Decision]


_decided_decoder = msgspec.json.Decoder(Decided)


def decided_message(decided: Decided) -> bytes:
    return msgspec.json.encode(decided)


def read_decided_message(data: bytes) -> Decided:
    return _decided_decoder.decode(data)


def decisions_announcement(redis: Redis, decided: Decided) -> tuple[str, bytes] | None:
    """The channel and message that wake the API processes long-polling these requests (None if there are no
    decisions: an empty message would name no request). The message carries each outcome, so a woken poll
    answers without reading MySQL again."""
    return (channel(redis, DECISIONS), decided_message(decided)) if decided.decisions else None


async def publish_decisions(redis: Redis, decided: Decided) -> None:
    if (announcement := decisions_announcement(redis, decided)) is not None:
        await redis.publish(*announcement)


def decide(
    requests: list[PendingRequest],
    windows: list[tuple[datetime, datetime]],
    doctor_busy: list[tuple[datetime, datetime]],
    patient_busy: dict[int, list[tuple[datetime, datetime]]],
    now: datetime,
) -> list[Decision]:
    """Decide requests in order, each seeing the ones confirmed before it. Pure: no I/O."""
    decisions = []
    for request in requests:
        slot = (request.start_time, request.end_time)
        if request.start_time <= now:
            reason = IN_PAST
        elif not any(start <= slot[0] and slot[1] <= end for start, end in windows):
            reason = OUTSIDE_AVAILABILITY
        elif any(overlaps(*slot, *busy) for busy in doctor_busy):
            reason = SLOT_TAKEN
        elif any(overlaps(*slot, *busy) for busy in patient_busy[request.patient_id]):
            reason = PATIENT_BUSY
        else:
            doctor_busy.append(slot)
            patient_busy[request.patient_id].append(slot)
            decisions.append(Decision(request.id, "confirmed"))
            continue
        decisions.append(Decision(request.id, "rejected", reason))
    return decisions


async def decide_pending_requests(tx: Connection, doctor_id: int, batch_size: int) -> Decided:
    """Decide up to `batch_size` pending requests of one doctor inside the caller's transaction.

    The doctor's row lock serializes every writer of this doctor's schedule; the patients' row locks
    serialize bookings of one patient with different doctors. Reads come after the locks, and the session
    runs READ COMMITTED, so they see everything committed before.
    """
    params = {"doctor_id": doctor_id, "limit": batch_size}
    rows = await tx.fetch_all("lock_doctor_and_pending_requests", params)
    doctor_exists = bool(rows)
    if not doctor_exists:
        rows = await tx.fetch_all("lock_pending_requests_of_doctor", params)
    now = utcnow()
    requests = [PendingRequest(r["id"], r["patient_id"], r["start_time"], r["end_time"], r["notes"])
                for r in rows if r["id"] is not None]
    if not requests:
        return Decided(doctor_id, now, [])
    if not doctor_exists:
        decisions = [Decision(r.id, "rejected", DOCTOR_NOT_FOUND) for r in requests]
    else:
        patient_ids = tuple(sorted({r.patient_id for r in requests}))
        await tx.fetch_all("lock_patients", {"patient_ids": patient_ids})
        span = {"from": min(r.start_time for r in requests), "to": max(r.end_time for r in requests)}
        schedule = await tx.fetch_all("list_schedule_between",
                                      {"doctor_id": doctor_id, "patient_ids": patient_ids, **span})
        windows, doctor_busy = [], []
        patient_busy: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        for row in schedule:
            interval = (row["start_time"], row["end_time"])
            if row["kind"] == "window":
                windows.append(interval)
            elif row["kind"] == "doctor":
                doctor_busy.append(interval)
            else:
                patient_busy[row["patient_id"]].append(interval)
        decisions = decide(requests, windows, doctor_busy, patient_busy, now)
    await record_decisions(tx, doctor_id, requests, decisions, now)
    fault_point("before_commit")
    return Decided(doctor_id, now, decisions)


async def record_decisions(
    tx: Connection, doctor_id: int, requests: list[PendingRequest], decisions: list[Decision], now: datetime
) -> None:
    by_id = {r.id: r for r in requests}
    confirmed = [by_id[d.request_id] for d in decisions if d.status == "confirmed"]
    if confirmed:
        appointments = [{"booking_request_id": r.id, "doctor_id": doctor_id, "patient_id": r.patient_id,
                         "start_time": r.start_time, "end_time": r.end_time, "notes": r.notes, "now": now}
                        for r in confirmed]
        confirmed_ids = tuple(r.id for r in confirmed)
        if len(appointments) == 1:  # the usual batch: the insert itself says the new id
            _, appointment_id = await tx.execute("insert_appointment", appointments[0])
            appointment_ids = {confirmed_ids[0]: appointment_id}
        else:  # a multi-row insert's ids need not be consecutive (MySQL 8's interleaved auto-increment)
            await tx.execute_many("insert_appointment", appointments)
            appointment_ids = {row["booking_request_id"]: row["id"] for row in
                               await tx.fetch_all("appointments_of_requests", {"ids": confirmed_ids})}
        await tx.execute("confirm_booking_requests", {"ids": confirmed_ids, "now": now})
        for d in decisions:
            if d.status == "confirmed":
                d.appointment_id = appointment_ids[d.request_id]
    rejected: dict[str, list[int]] = defaultdict(list)
    for d in decisions:
        if d.status == "rejected":
            rejected[d.reason or ""].append(d.request_id)
    for reason, ids in rejected.items():
        await tx.execute("reject_booking_requests", {"ids": tuple(ids), "reason": reason, "now": now})


async def decide_for_doctor(db: Database, doctor_id: int, batch_size: int, attempts: int = 3) -> Decided:
    """Run the decision in one transaction; a deadlock or lock-wait timeout rolls back and runs it again."""
    for attempt in range(1, attempts + 1):
        try:
            async with db.transaction() as tx:
                return await decide_pending_requests(tx, doctor_id, batch_size)
        except Exception as exc:
            if mysql_error_code(exc) not in RETRYABLE_ERRORS or attempt == attempts:
                raise
            log.info("booking transaction for doctor %s hit MySQL error %s; retrying", doctor_id,
                     mysql_error_code(exc))
            await asyncio.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")
