"""The booking decision: run by the worker, under the doctor's row lock, in one transaction.

`decide` is pure (data in, decisions out); `decide_pending_requests` is the I/O around it, and `decide_for_doctor`
the transaction and its retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.core import faults
from service.core.availability import DoctorTime, Taken
from service.core.db import RETRYABLE_ERRORS, Connection, Database, Row, mysql_error_code
from service.core.outbox import CONFIRMED, REJECTED, Event, appointment_event, record_events, rfc3339
from service.core.queue import Decided, Decision
from service.core.schedule import doctor_time_from_rows, read_bounds, rules_of
from service.core.times import utcnow
from service.core.zones import zone_named

log = logging.getLogger("service.booking")

# Machine-readable reasons a request is rejected or failed, beyond availability's (IN_PAST, TOO_SOON, ...).
PATIENT_BUSY = "patient_busy"
DOCTOR_NOT_FOUND = "doctor_not_found"
TYPE_UNAVAILABLE = "appointment_type_unavailable"  # deactivated between the request and its decision
RETRIES_EXHAUSTED = "retries_exhausted"
# Requests of a batch whose times lie closer than this are read from MySQL in one range; farther ones in another,
# so a batch never reads a doctor's whole calendar between two far-apart requests.
NEARBY = timedelta(days=1)


@dataclass(slots=True)
class PendingRequest:
    id: int
    patient_id: int
    start_time: datetime
    end_time: datetime
    notes: str | None
    appointment_type_id: int | None = None


def decide(
    requests: list[PendingRequest], doctor: DoctorTime, patients: dict[int, Taken], now: datetime,
    types: dict[int, Row] | None = None,
) -> list[Decision]:
    """Decide requests in order, each seeing the ones confirmed before it, with the rules of its appointment type
    (`types`: the doctor's active ones, by id). Pure: no I/O."""
    types = types or {}
    decisions = []
    for request in requests:
        start, end, type_id = request.start_time, request.end_time, request.appointment_type_id
        patient = patients.setdefault(request.patient_id, Taken())
        rules = rules_of(types.get(type_id))  # no type: no rules beyond "in the future"
        if type_id is not None and type_id not in types:
            reason: str | None = TYPE_UNAVAILABLE
        else:
            reason = doctor.why_not(start, end, now, rules)
        if reason is None and patient.clash(start, end) is not None:
            reason = PATIENT_BUSY
        if reason is None:
            doctor.take(start, end, rules)
            patient.take(start, end)
            decisions.append(Decision(request.id, "confirmed"))
        else:
            decisions.append(Decision(request.id, "rejected", reason))
    return decisions


def ranges_to_read(requests: list[PendingRequest]) -> list[tuple[datetime, datetime]]:
    """The time ranges a batch's decision must read: one per cluster of nearby requests."""
    ranges: list[tuple[datetime, datetime]] = []
    for request in sorted(requests, key=lambda r: r.start_time):
        if ranges and request.start_time <= ranges[-1][1] + NEARBY:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], request.end_time))
        else:
            ranges.append((request.start_time, request.end_time))
    return ranges


async def decide_pending_requests(tx: Connection, doctor_id: int, batch_size: int) -> Decided:
    """Decide up to `batch_size` pending requests of one doctor inside the caller's transaction.

    The doctor's row lock serializes every writer of this doctor's schedule (bookings, cancellations, windows,
    weekly hours, time off, types); the patients' row locks serialize bookings of one patient with different
    doctors. Reads come after the locks, and the session runs READ COMMITTED, so they see everything committed
    before.
    """
    params = {"doctor_id": doctor_id, "limit": batch_size}
    rows = await tx.fetch_all("lock_doctor_and_pending_requests", params)
    doctor_exists = bool(rows)
    if not doctor_exists:
        rows = await tx.fetch_all("lock_pending_requests_of_doctor", params)
    now = utcnow()
    requests = [PendingRequest(r["id"], r["patient_id"], r["start_time"], r["end_time"], r["notes"],
                               r["appointment_type_id"]) for r in rows if r["id"] is not None]
    types: dict[int, Row] = {}
    if not requests:
        return Decided(doctor_id, now, [])
    if not doctor_exists:
        decisions = [Decision(r.id, "rejected", DOCTOR_NOT_FOUND) for r in requests]
    else:
        patient_ids = tuple(sorted({r.patient_id for r in requests}))
        await tx.fetch_all("lock_patients", {"patient_ids": patient_ids})
        if type_ids := tuple({r.appointment_type_id for r in requests if r.appointment_type_id is not None}):
            types = {t["id"]: t for t in await tx.fetch_all("list_appointment_types_by_id", {"ids": type_ids})
                     if t["doctor_id"] == doctor_id and t["active"]}
        ranges = ranges_to_read(requests)
        schedule_rows: list[Row] = []
        patient_taken: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        for start, end in ranges:
            for row in await tx.fetch_all("list_schedule_between", {
                    "doctor_id": doctor_id, "patient_ids": patient_ids, **read_bounds(start, end)}):
                if row["kind"] == "patient":
                    patient_taken[row["patient_id"]].append((row["start_time"], row["end_time"]))
                else:
                    schedule_rows.append(row)
        doctor = doctor_time_from_rows(schedule_rows, zone_named(rows[0]["timezone"]), ranges)
        decisions = decide(requests, doctor, {p: Taken(spans) for p, spans in patient_taken.items()}, now, types)
    await record_decisions(tx, doctor_id, requests, decisions, now, types)
    if faults.armed:
        faults.hit("before_commit")
    return Decided(doctor_id, now, decisions)


NO_BUFFERS = {"buffer_before_minutes": 0, "buffer_after_minutes": 0}


def buffers_of(appointment_type: Row | None) -> dict[str, int]:
    """The buffers an appointment keeps from its type (none without one)."""
    if appointment_type is None:
        return NO_BUFFERS
    return {name: appointment_type[name] for name in NO_BUFFERS}


async def record_decisions(
    tx: Connection, doctor_id: int, requests: list[PendingRequest], decisions: list[Decision], now: datetime,
    types: dict[int, Row],
) -> None:
    by_id = {r.id: r for r in requests}
    confirmed = [by_id[d.request_id] for d in decisions if d.status == "confirmed"]
    if confirmed:
        appointments = [{"booking_request_id": r.id, "doctor_id": doctor_id, "patient_id": r.patient_id,
                         "appointment_type_id": r.appointment_type_id, "start_time": r.start_time,
                         "end_time": r.end_time, "notes": r.notes, "now": now,
                         **buffers_of(types.get(r.appointment_type_id))}
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
    # The batch's events, in the same transaction (one statement); the worker asks for their delivery after commit.
    await record_events(tx, [decision_event(d, by_id[d.request_id], doctor_id) for d in decisions], now=now)


def decision_event(d: Decision, r: PendingRequest, doctor_id: int) -> Event:
    """appointment.confirmed with the new appointment, or booking.rejected with the request and the reason."""
    if d.status == "confirmed":
        return appointment_event(CONFIRMED, {
            "id": d.appointment_id, "doctor_id": doctor_id, "patient_id": r.patient_id, "booking_request_id": r.id,
            "appointment_type_id": r.appointment_type_id, "start_time": r.start_time, "end_time": r.end_time})
    return Event(REJECTED, doctor_id, r.patient_id, None, {"booking_request": {
        "id": r.id, "doctor_id": doctor_id, "patient_id": r.patient_id, "appointment_type_id": r.appointment_type_id,
        "start_time": rfc3339(r.start_time), "end_time": rfc3339(r.end_time), "status": d.status,
        "reason": d.reason}})


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
