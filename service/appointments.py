"""Appointments: queue-backed booking, reading and cancelling."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Body, FromQuery, HeaderParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import Meta

from service.booking import enqueue_booking
from service.booking_requests import read_own_request, status_url, to_out, wait_for_decision
from service.db import ER_DUP_ENTRY, Connection, Database, Row, mysql_error_code
from service.dependencies import DatabaseDep, ListenerDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.errors import Conflict, InvalidInput, NotFound, problem_responses
from service.paging import MAX_ID, From, Id, Limit, Offset, To, time_range
from service.schedule import announce_schedule_change
from service.security import CurrentUser, requires_patient
from service.times import from_row, to_db, utcnow

AppointmentStatus = Literal["confirmed", "cancelled"]
MAX_APPOINTMENT = timedelta(hours=8)
MAX_PREFER_WAIT = 10
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


class BookingIn(msgspec.Struct, forbid_unknown_fields=True):
    doctor_id: Annotated[int, Meta(ge=1, le=MAX_ID)]
    start_time: datetime
    end_time: datetime
    notes: Annotated[str, Meta(max_length=2000)] | None = None


class BookingAccepted(msgspec.Struct):
    request_id: int
    status: str
    status_url: str


class AppointmentOut(msgspec.Struct):
    id: int
    booking_request_id: int
    doctor_id: int
    doctor_name: str
    patient_id: int
    patient_name: str
    start_time: datetime
    end_time: datetime
    notes: str | None
    status: AppointmentStatus
    created_at: datetime
    cancelled_at: datetime | None
    cancelled_by: int | None
    cancel_reason: str | None


class AppointmentPage(msgspec.Struct):
    items: list[AppointmentOut]
    total: int
    limit: int
    offset: int


def prefer_wait(prefer: str | None) -> int:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; 0 when absent or malformed."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), MAX_PREFER_WAIT) if match else 0


def check_booking(data: BookingIn) -> tuple[datetime, datetime]:
    start = to_db(data.start_time, "start_time")
    end = to_db(data.end_time, "end_time")
    if end <= start:
        raise InvalidInput("must be after start_time", field="end_time")
    if start <= utcnow():
        raise InvalidInput("must be in the future", field="start_time")
    if end - start > MAX_APPOINTMENT:
        raise InvalidInput("an appointment is at most 8 hours long", field="end_time")
    return start, end


def fingerprint(data: BookingIn, start: datetime, end: datetime) -> str:
    """What makes two bodies "the same request" for an Idempotency-Key."""
    canonical = f"{data.doctor_id}|{start.isoformat()}|{end.isoformat()}|{data.notes or ''}"
    return hashlib.sha256(canonical.encode()).hexdigest()


async def store_request(
    db: Database, data: BookingIn, patient_id: int, idempotency_key: str | None
) -> tuple[int, Row | None]:
    """Store the pending request, or find the one this Idempotency-Key already made.

    Returns the request id and, if it is new, its row as stored.
    """
    start, end = check_booking(data)
    digest = fingerprint(data, start, end) if idempotency_key else None
    if idempotency_key:
        first = await find_by_idempotency_key(db, patient_id, idempotency_key, digest)
        if first is not None:
            return first, None
    stored = {"patient_id": patient_id, "doctor_id": data.doctor_id, "start_time": start, "end_time": end,
              "notes": data.notes, "created_at": utcnow()}
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
        raise NotFound(f"no doctor with id {data.doctor_id}")
    return request_id, {"id": request_id, **stored, "status": "pending", "reason": None, "appointment_id": None,
                        "decided_at": None}


async def find_by_idempotency_key(db: Database, patient_id: int, key: str, digest: str | None) -> int | None:
    first = await db.fetch_one("find_booking_request_by_idempotency_key",
                               {"patient_id": patient_id, "idempotency_key": key})
    if first is None:
        return None
    if first["request_fingerprint"] != digest:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return first["id"]


async def find_appointment(db: Database | Connection, appointment_id: int, user: CurrentUser) -> Row:
    row = await db.fetch_one("find_appointment_for_user", {"id": appointment_id, "user_id": user.id})
    if row is None:
        raise NotFound(f"no appointment {appointment_id} of yours")
    return row


async def list_appointments(
    db: Database, user: CurrentUser, status: str | None, start: str | None, end: str | None,
    limit: int, offset: int,
) -> AppointmentPage:
    """The caller's appointments: a doctor's schedule or a patient's bookings, by start time."""
    range_start, range_end = time_range(start, end)
    params = {
        "doctor_id": user.id if user.role == "Doctor" else None,
        "patient_id": user.id if user.role == "Patient" else None,
        "status": status, "from": range_start, "to": range_end,
    }
    async with db.connection() as conn:
        rows = await conn.fetch_all("list_appointments_for_user", {**params, "limit": limit, "offset": offset})
        total = await conn.fetch_value("count_appointments_for_user", params)
    return AppointmentPage([from_row(AppointmentOut, r) for r in rows], total=total, limit=limit, offset=offset)


class AppointmentController(Controller):
    path = "/appointments"
    tags = ["appointments"]

    @post(
        "/", guards=[requires_patient], status_code=HTTP_202_ACCEPTED, operation_id="bookAppointment",
        summary="Ask for an appointment; a worker decides it",
        description=(
            "Stores a booking request and answers 202 with its status URL. Send `Prefer: wait=N` (N ≤ 10) to "
            "wait for the decision: 201 with the appointment, or 409 with the reason, if it comes in time. "
            "The same `Idempotency-Key` returns the first request instead of making another."
        ),
        responses={HTTP_201_CREATED: ResponseSpec(AppointmentOut, description="Booked (with Prefer: wait)"),
                   **problem_responses(400, 401, 403, 404, 409, 413, 415, 503)},
    )
    async def book(
        self,
        data: Annotated[BookingIn, Body()],
        user: UserDep,
        db: DatabaseDep,
        redis: RedisDep,
        listener: ListenerDep,
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", min_length=1,
                                                         max_length=255)] = None,
        prefer: Annotated[str | None, HeaderParameter(name="Prefer", max_length=200)] = None,
    ) -> Response[BookingAccepted]:
        request_id, stored = await store_request(db, data, user.id, idempotency_key)
        if stored is not None:
            listener.remember(stored)  # before the job is queued: see Notifications.remember
            status = "pending"
        else:  # a replayed Idempotency-Key: say where the first request stands
            status = (await read_own_request(db, request_id, user.id))["status"]
        if status == "pending":
            await enqueue_booking(redis, request_id, data.doctor_id)
        headers = {"Location": status_url(request_id)}
        if wait := prefer_wait(prefer):
            row = await wait_for_decision(db, listener, request_id, user.id, wait)
            decided = await decided_response(db, row, user)
            if decided is not None:
                return decided
            headers["Preference-Applied"] = f"wait={wait}"
        return Response(
            BookingAccepted(request_id=request_id, status=status, status_url=status_url(request_id)),
            status_code=HTTP_202_ACCEPTED, headers=headers,
        )

    @get("/my-appointments", operation_id="listMyAppointments",
         summary="Your appointments: a patient's bookings or a doctor's schedule",
         responses=problem_responses(400, 401, 503))
    async def my_appointments(
        self, user: UserDep, db: DatabaseDep, start: From = None, end: To = None,
        status: FromQuery[AppointmentStatus | None] = None, limit: Limit = 50, offset: Offset = 0,
    ) -> AppointmentPage:
        return await list_appointments(db, user, status, start, end, limit, offset)

    @get("/{appointment_id:int}", operation_id="getAppointment", summary="One of your appointments",
         responses=problem_responses(400, 401, 404, 503))
    async def get_appointment(self, appointment_id: Id, user: UserDep, db: DatabaseDep) -> AppointmentOut:
        return from_row(AppointmentOut, await find_appointment(db, appointment_id, user))

    @delete("/{appointment_id:int}", status_code=200, operation_id="cancelAppointment",
            summary="Cancel an appointment (its patient, or its doctor with a reason)",
            responses=problem_responses(400, 401, 404, 409, 503))
    async def cancel(
        self,
        appointment_id: Id,
        user: UserDep,
        tx: TransactionDep,
        redis: RedisDep,
        schedule: ScheduleDep,
        reason: Annotated[str | None, QueryParameter(min_length=1, max_length=500,
                                                description="Why; required when the doctor cancels")] = None,
    ) -> AppointmentOut:
        appointment = await find_appointment(tx, appointment_id, user)
        if appointment["status"] == "cancelled":
            return from_row(AppointmentOut, appointment)
        if user.role == "Doctor" and not (reason and reason.strip()):
            raise InvalidInput("a doctor must say why the appointment is cancelled", field="reason")
        if appointment["start_time"] <= utcnow():
            raise Conflict("the appointment has already started")
        # Every writer of a doctor's appointments takes the doctor's row lock first (see booking.py).
        await tx.fetch_one("lock_doctor", {"doctor_id": appointment["doctor_id"]})
        tx.after_commit(partial(announce_schedule_change, redis, schedule, appointment["doctor_id"]))
        await tx.execute("cancel_appointment", {"id": appointment_id, "user_id": user.id, "now": utcnow(),
                                                "reason": reason.strip() if reason else None})
        return from_row(AppointmentOut, await find_appointment(tx, appointment_id, user))


async def decided_response(db: Database, row: Row, user: CurrentUser) -> Response | None:
    """For `Prefer: wait`: 201 with the appointment, 409 with the reason, or None while still pending."""
    if row["status"] == "confirmed":
        appointment = await find_appointment(db, row["appointment_id"], user)
        return Response(from_row(AppointmentOut, appointment), status_code=HTTP_201_CREATED,
                        headers={"Location": f"/appointments/{appointment['id']}"})
    if row["status"] in ("rejected", "failed"):
        raise Conflict(f"the booking was {row['status']}: {row['reason']}", reason=row["reason"],
                       request_id=row["id"], status_url=status_url(row["id"]),
                       booking_request=msgspec.to_builtins(to_out(row)))
    return None
