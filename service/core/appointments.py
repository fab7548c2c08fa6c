"""Booking requests (stored, then decided by the worker) and the appointments they make: reading, cancelling."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Literal

from redis.asyncio import Redis

from service.core.accounts import CurrentUser
from service.core.db import ER_DUP_ENTRY, Connection, Database, Row, mysql_error_code
from service.core.doctors import lock_doctor
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.outbox import CANCELLED, appointment_event, record_events, sequence_at
from service.core.schedule import bookable_type
from service.core.times import grid_span, on_grid, time_range, to_db, utcnow

AppointmentStatus = Literal["confirmed", "cancelled"]
RequestStatus = Literal["pending", "confirmed", "rejected", "failed"]
MAX_APPOINTMENT = timedelta(hours=8)

log = logging.getLogger("service.appointments")
# A line per booking, like an access log: ACCESS_LOG=false silences it (the API's logging setup).
access_log = logging.getLogger("service.access")


def status_url(request_id: int) -> str:
    return f"/booking-requests/{request_id}"


def check_booking(start_time: datetime, end_time: datetime) -> tuple[datetime, datetime]:
    """The asked-for slot as naive UTC: on the 5-minute grid, in the future, ending after it starts, at most 8
    hours."""
    start, end = grid_span(start_time, end_time)
    if start <= utcnow():
        raise InvalidInput("must be in the future", field="start_time")
    if end - start > MAX_APPOINTMENT:
        raise InvalidInput("an appointment is at most 8 hours long", field="end_time")
    return start, end


def fingerprint(doctor_id: int, type_id: int | None, start: datetime, end: datetime, notes: str | None) -> str:
    """What makes two bodies "the same request" for an Idempotency-Key."""
    canonical = f"{doctor_id}|{type_id or ''}|{start.isoformat()}|{end.isoformat()}|{notes or ''}"
    return hashlib.sha256(canonical.encode()).hexdigest()


async def requested_span(db: Database, doctor_id: int, start_time: datetime, end_time: datetime | None,
                         type_id: int | None) -> tuple[datetime, datetime]:
    """The span a booking asks for: from its start and end, or from its start and its type's length (one of the
    doctor's active types)."""
    if type_id is None:
        if end_time is None:
            raise InvalidInput("give end_time, or an appointment_type_id", field="end_time")
        return check_booking(start_time, end_time)
    if end_time is not None:
        raise InvalidInput("give either end_time or appointment_type_id, not both", field="end_time")
    appointment_type = await bookable_type(db, doctor_id, type_id)
    start = on_grid(to_db(start_time, "start_time"), "start_time")
    try:
        end = start + timedelta(minutes=appointment_type["duration_minutes"])
    except OverflowError:
        raise InvalidInput("the appointment would end after the year 9999", field="start_time") from None
    return check_booking(start, end)


async def store_request(
    db: Database, patient_id: int, doctor_id: int, start_time: datetime, end_time: datetime | None,
    notes: str | None, idempotency_key: str | None, type_id: int | None = None,
) -> tuple[int, Row | None]:
    """Store the pending request, or find the one this Idempotency-Key already made.

    Returns the request id and, if it is new, its row as stored.
    """
    start, end = await requested_span(db, doctor_id, start_time, end_time, type_id)
    digest = fingerprint(doctor_id, type_id, start, end, notes) if idempotency_key else None
    if idempotency_key:
        first = await find_by_idempotency_key(db, patient_id, idempotency_key, digest)
        if first is not None:
            return first, None
    stored = {"patient_id": patient_id, "doctor_id": doctor_id, "appointment_type_id": type_id, "start_time": start,
              "end_time": end, "notes": notes, "created_at": utcnow()}
    try:
        inserted, request_id = await db.execute(
            "insert_booking_request", {**stored, "idempotency_key": idempotency_key, "fingerprint": digest})
    except Exception as exc:
        if mysql_error_code(exc) == ER_DUP_ENTRY and idempotency_key:  # the same key raced in twice
            first = await find_by_idempotency_key(db, patient_id, idempotency_key, digest)
            if first is not None:
                return first, None
        raise
    if not inserted:
        raise NotFound(f"no doctor with id {doctor_id}")
    access_log.info("booking request %s stored (doctor %s)", request_id, doctor_id)  # the worker logs its decision
    return request_id, {"id": request_id, **stored, "status": "pending", "reason": None, "appointment_id": None,
                        "decided_at": None}


def stale_since(sweep_after_seconds: int) -> datetime:
    """A request still pending that was stored before this has waited longer than a decision takes: the sweep
    queues it again (SWEEP_AFTER_SECONDS)."""
    return utcnow() - timedelta(seconds=sweep_after_seconds)


async def count_stale_pending(db: Database, sweep_after_seconds: int) -> int:
    """How many requests are pending for longer than a decision takes (one range of the (status, created_at)
    index)."""
    return await db.fetch_value("count_stale_pending_requests", {"before": stale_since(sweep_after_seconds)})


async def find_by_idempotency_key(db: Database, patient_id: int, key: str, digest: str | None) -> int | None:
    first = await db.fetch_one("find_booking_request_by_idempotency_key",
                               {"patient_id": patient_id, "idempotency_key": key})
    if first is None:
        return None
    if first["request_fingerprint"] != digest:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return first["id"]


async def read_own_request(db: Database, request_id: int, patient_id: int) -> Row:
    """The request if it is this patient's; 404 otherwise, so others cannot even learn that it exists."""
    row = await db.fetch_one("find_booking_request_for_patient", {"id": request_id, "patient_id": patient_id})
    if row is None:
        raise NotFound(f"no booking request {request_id} of yours")
    return row


async def list_requests(db: Database, patient_id: int, status: str | None, limit: int,
                        offset: int) -> tuple[list[Row], int]:
    """A patient's booking requests, newest first, and how many in all."""
    params = {"patient_id": patient_id, "status": status}
    async with db.connection() as conn:
        rows = await conn.fetch_all("list_booking_requests_for_patient", {**params, "limit": limit, "offset": offset})
        total = await conn.fetch_value("count_booking_requests_for_patient", params)
    return rows, total


async def find_appointment(db: Database | Connection, appointment_id: int, user: CurrentUser) -> Row:
    """The appointment if the user is its patient or its doctor; 404 otherwise."""
    row = await db.fetch_one("find_appointment_for_user", {"id": appointment_id, "user_id": user.id})
    if row is None:
        raise NotFound(f"no appointment {appointment_id} of yours")
    return row


async def list_appointments(
    db: Database, user: CurrentUser, status: str | None, start: str | None, end: str | None, limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    """The user's appointments: a doctor's schedule or a patient's bookings, by start time; and how many."""
    range_start, range_end = time_range(start, end)
    params = {
        "doctor_id": user.id if user.role == "Doctor" else None,
        "patient_id": user.id if user.role == "Patient" else None,
        "status": status, "from": range_start, "to": range_end,
    }
    async with db.connection() as conn:
        rows = await conn.fetch_all("list_appointments_for_user", {**params, "limit": limit, "offset": offset})
        total = await conn.fetch_value("count_appointments_for_user", params)
    return rows, total


async def cancel_appointment(tx: Connection, appointment_id: int, user: CurrentUser,
                             reason: str | None, redis: Redis | None = None) -> tuple[Row, bool]:
    """Cancel as its patient, or as its doctor with a reason, under the doctor's row lock, with its
    appointment.cancelled event (delivered after the commit through `redis`). The appointment as it now stands, and
    whether this call cancelled it (False: it was cancelled already)."""
    appointment = await find_appointment(tx, appointment_id, user)
    if appointment["status"] == "cancelled":
        return appointment, False
    if user.role == "Doctor" and not (reason and reason.strip()):
        raise InvalidInput("a doctor must say why the appointment is cancelled", field="reason")
    if appointment["start_time"] <= utcnow():
        raise Conflict("the appointment has already started")
    await lock_doctor(tx, appointment["doctor_id"])
    now = utcnow()
    await tx.execute("cancel_appointment", {"id": appointment_id, "user_id": user.id, "now": now,
                                            "reason": reason.strip() if reason else None})
    cancelled = await find_appointment(tx, appointment_id, user)
    await record_events(tx, [appointment_event(CANCELLED, cancelled, sequence_at(now))], redis, now)
    return cancelled, True
