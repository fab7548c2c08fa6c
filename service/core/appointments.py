"""Booking requests (stored, then decided by the worker) and the appointments they make: reading, cancelling."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Literal

from service.core import staff
from service.core.accounts import CurrentUser
from service.core.availability import SLOT_TAKEN
from service.core.db import ER_DUP_ENTRY, Connection, Database, Row, mysql_error_code
from service.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.core.schedule import BookableTypes, bookable_type
from service.core.times import grid_span, on_grid, time_range, to_db, utcnow

AppointmentStatus = Literal["confirmed", "checked_in", "completed", "no_show", "cancelled", "rescheduled"]
RequestStatus = Literal["pending", "confirmed", "rejected", "failed"]
RequestKind = Literal["book", "reschedule", "hold", "confirm_hold"]
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


def fingerprint(doctor_id: int, type_id: int | None, start: datetime, end: datetime, notes: str | None,
                reschedules: int | None = None, requested_by: int | None = None, kind: RequestKind = "book",
                hold_id: int | None = None) -> str:
    """What makes two bodies "the same request" for an Idempotency-Key (a hold is not the booking of its slot).
    Keys are the patient's: one sent by staff on the patient's behalf is another request (`by…|` cannot start a
    patient's own, which starts with a number)."""
    canonical = f"{doctor_id}|{type_id or ''}|{start.isoformat()}|{end.isoformat()}|{notes or ''}"
    if reschedules is not None:
        canonical += f"|reschedules {reschedules}"
    if kind in ("hold", "confirm_hold"):
        canonical += f"|{kind} {hold_id or ''}"
    if requested_by is not None:
        canonical = f"by{requested_by}|{canonical}"
    return hashlib.sha256(canonical.encode()).hexdigest()


async def requested_span(db: Database, doctor_id: int, start_time: datetime, end_time: datetime | None,
                         type_id: int | None, types: BookableTypes | None = None) -> tuple[datetime, datetime]:
    """The span a booking asks for: from its start and end, or from its start and its type's length (one of the
    doctor's active types, from `types` while it holds them)."""
    if type_id is None:
        if end_time is None:
            raise InvalidInput("give end_time, or an appointment_type_id", field="end_time")
        return check_booking(start_time, end_time)
    if end_time is not None:
        raise InvalidInput("give either end_time or appointment_type_id, not both", field="end_time")
    appointment_type = await bookable_type(db, doctor_id, type_id, types=types)
    start = on_grid(to_db(start_time, "start_time"), "start_time")
    try:
        end = start + timedelta(minutes=appointment_type["duration_minutes"])
    except OverflowError:
        raise InvalidInput("the appointment would end after the year 9999", field="start_time") from None
    return check_booking(start, end)


async def store_request(
    db: Database, actor: CurrentUser, patient_id: int, doctor_id: int, start_time: datetime,
    end_time: datetime | None, notes: str | None, idempotency_key: str | None, type_id: int | None = None,
    reschedules: int | None = None, check_new: Callable[[], None] | None = None, kind: RequestKind | None = None,
    types: BookableTypes | None = None, known_taken: KnownTakenCheck | None = None,
) -> tuple[int, Row | None]:
    """Store the pending request (a booking, a hold, or the move of appointment `reschedules`), or find the one this
    Idempotency-Key already made. `actor` asks: the patient, or staff on the patient's
    behalf (kept as `requested_by`). `check_new` may refuse a new request (not a replayed one); so does
    `known_taken`, a booking of a time known to be taken (409 slot_taken, nothing stored).

    Returns the request id and, if it is new, its row as stored.
    """
    start, end = await requested_span(db, doctor_id, start_time, end_time, type_id, types)
    kind = kind or ("book" if reschedules is None else "reschedule")
    return await store_span_request(db, actor, patient_id, doctor_id, type_id, start, end, notes, idempotency_key,
                                    kind, reschedules=reschedules, check_new=check_new, known_taken=known_taken)


async def store_span_request(
    db: Database, actor: CurrentUser, patient_id: int, doctor_id: int, type_id: int | None, start: datetime,
    end: datetime, notes: str | None, idempotency_key: str | None, kind: RequestKind, *,
    reschedules: int | None = None, hold_id: int | None = None, check_new: Callable[[], None] | None = None,
    check_locked: Callable[[Connection], Awaitable[None]] | None = None, known_taken: KnownTakenCheck | None = None,
) -> tuple[int, Row | None]:
    """store_request for a checked span. `check_locked`, if given, runs first in the inserting transaction (it may
    take locks, and refuse the request by raising)."""
    requested_by = None if actor.id == patient_id else actor.id
    digest = (fingerprint(doctor_id, type_id, start, end, notes, reschedules, requested_by, kind, hold_id)
              if idempotency_key else None)
    if known_taken is not None and known_taken(doctor_id, start, end, type_id):
        # The worker would reject it: refused now, unless its Idempotency-Key replays a request stored before.
        if idempotency_key and (first := await find_by_idempotency_key(db, patient_id, idempotency_key, digest)):
            return first, None
        raise Conflict("this time is taken (the booking was refused at once, and not stored)", reason=SLOT_TAKEN)
    # A key's first use is the usual case: with nothing to check before a new request, the insert itself finds a
    # replay (the key is unique per patient) and the lookup runs only then (below).
    if idempotency_key and (check_new is not None or check_locked is not None):
        first = await find_by_idempotency_key(db, patient_id, idempotency_key, digest)
        if first is not None:
            return first, None
    if check_new is not None:
        check_new()
    stored = {"patient_id": patient_id, "requested_by": requested_by, "doctor_id": doctor_id,
              "appointment_type_id": type_id, "start_time": start, "end_time": end, "notes": notes,
              "created_at": utcnow(), "kind": kind, "reschedules": reschedules, "hold_id": hold_id}
    row = {**stored, "idempotency_key": idempotency_key, "fingerprint": digest}
    try:
        if check_locked is None:  # one statement: its history row comes with its decision (core/history.py)
            inserted, request_id = await db.execute("insert_booking_request", row)
        else:
            async with db.transaction() as tx:
                await check_locked(tx)
                inserted, request_id = await tx.execute("insert_booking_request", row)
    except Exception as exc:
        if mysql_error_code(exc) == ER_DUP_ENTRY and idempotency_key:  # a replay, or the same key raced in twice
            first = await find_by_idempotency_key(db, patient_id, idempotency_key, digest)
            if first is not None:
                return first, None
        raise
    if not inserted:
        raise NotFound(f"no doctor with id {doctor_id}")
    access_log.info("booking request %s stored (doctor %s)", request_id, doctor_id)  # the worker logs its decision
    return request_id, {"id": request_id, **stored, "status": "pending", "reason": None, "appointment_id": None,
                        "decided_at": None}


# Whether a booking of [start, end) of this doctor (of this type) is known to be taken (the API's KnownTaken.taken).
KnownTakenCheck = Callable[[int, datetime, datetime, int | None], bool]


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
        raise Conflict("this Idempotency-Key was already used for this patient with a different request body, "
                       "or by someone else (the patient, or staff on their behalf)")
    return first["id"]


async def read_own_request(db: Database, request_id: int, user_id: int) -> Row:
    """The request if it is this user's: its patient's, or the staff member's who asked for it on the patient's
    behalf; 404 otherwise, so others cannot even learn that it exists."""
    row = await db.fetch_one("find_booking_request_for_user", {"id": request_id, "user_id": user_id})
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


async def booked_appointment(db: Database, request: Row) -> Row:
    """The appointment a confirmed request made, for whoever may read the request (its patient, or the staff
    member who asked for it), as its patient sees it."""
    return await db.fetch_one("find_appointment_for_user", {"id": request["appointment_id"],
                                                            "user_id": request["patient_id"], "any": False})


async def find_appointment(db: Database | Connection, appointment_id: int, user: CurrentUser) -> Row:
    """The appointment if the user is its patient, its doctor, or staff (the front desk sees every one); 404
    otherwise."""
    row = await db.fetch_one("find_appointment_for_user", {"id": appointment_id, "user_id": user.id,
                                                           "any": staff.sees_every_appointment(user)})
    if row is None:
        raise NotFound(f"no appointment {appointment_id} of yours")
    return row


async def list_appointments(
    db: Database, user: CurrentUser, status: str | None, start: str | None, end: str | None, limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    """The user's appointments: a doctor's schedule or a patient's bookings, by start time; and how many."""
    if user.role not in ("Doctor", "Patient"):  # staff have none of their own (and no filter must mean all)
        raise Forbidden("Only a doctor or a patient has appointments of their own")
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
