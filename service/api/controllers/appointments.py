"""Appointments: queue-backed booking, reading and cancelling."""

from __future__ import annotations

import re
from datetime import datetime
from functools import partial
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Body, HeaderParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from msgspec import Meta

from service.api.dependencies import DatabaseDep, ListenerDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import MAX_ID, AppointmentStatusFilter, From, Id, Limit, Offset, To
from service.api.problems import problem_responses
from service.api.schedule_cache import announce_schedule_change
from service.api.schemas import AppointmentOut, AppointmentPage, appointments_page, request_out
from service.api.security import requires_patient
from service.core import appointments
from service.core.accounts import CurrentUser
from service.core.appointments import status_url
from service.core.db import Database, Row
from service.core.errors import Conflict
from service.core.queue import enqueue_booking
from service.core.times import from_row

MAX_PREFER_WAIT = 10
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
# Printable ASCII, as the IETF draft's Idempotency-Key: beyond ASCII a header carries bytes whose meaning depends on
# the sender's encoding (`caf\xe9` and `caf\xc3\xa9` are both café). Stored and compared byte for byte (migration 0008).
IDEMPOTENCY_KEY = r"^[ -~]+$"


class BookingIn(msgspec.Struct, forbid_unknown_fields=True):
    """A start and an end, or a start and one of the doctor's appointment types (its length and rules)."""

    example: ClassVar[dict[str, Any]] = {
        "doctor_id": 7, "start_time": "2030-01-15T10:00:00Z", "end_time": "2030-01-15T10:30:00Z",
        "notes": "Follow-up on the blood test"}

    doctor_id: Annotated[int, Meta(ge=1, le=MAX_ID)]
    start_time: datetime
    end_time: datetime | None = None
    appointment_type_id: Annotated[int, Meta(ge=1, le=MAX_ID)] | None = None
    notes: Annotated[str, Meta(max_length=2000)] | None = None


class BookingAccepted(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"request_id": 104, "status": "pending", "status_url": "/booking-requests/104"}

    request_id: int
    status: str
    status_url: str


def prefer_wait(prefer: str | None) -> int:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; 0 when absent or malformed."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), MAX_PREFER_WAIT) if match else 0


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
        idempotency_key: Annotated[str | None, HeaderParameter(
            name="Idempotency-Key", min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY,
            description="Printable ASCII, compared byte for byte")] = None,
        prefer: Annotated[str | None, HeaderParameter(name="Prefer", max_length=200)] = None,
    ) -> Response[BookingAccepted]:
        request_id, stored = await appointments.store_request(
            db, user.id, data.doctor_id, data.start_time, data.end_time, data.notes, idempotency_key,
            data.appointment_type_id)
        if stored is not None:
            listener.remember(stored)  # before the job is queued: see Notifications.remember
            status = "pending"
        else:  # a replayed Idempotency-Key: say where the first request stands
            status = (await appointments.read_own_request(db, request_id, user.id))["status"]
        if status == "pending":
            await enqueue_booking(redis, request_id, data.doctor_id)
        headers = {"Location": status_url(request_id)}
        if wait := prefer_wait(prefer):
            row = await listener.wait_for_decision(
                request_id, user.id, partial(appointments.read_own_request, db, request_id, user.id), wait)
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
        status: AppointmentStatusFilter = None, limit: Limit = 50, offset: Offset = 0,
    ) -> AppointmentPage:
        return await appointments_page(db, user, status, start, end, limit, offset)

    @get("/{appointment_id:int}", operation_id="getAppointment", summary="One of your appointments",
         responses=problem_responses(400, 401, 404, 503))
    async def get_appointment(self, appointment_id: Id, user: UserDep, db: DatabaseDep) -> AppointmentOut:
        return from_row(AppointmentOut, await appointments.find_appointment(db, appointment_id, user))

    @delete("/{appointment_id:int}", status_code=200, operation_id="cancelAppointment",
            summary="Cancel an appointment (its patient, or its doctor with a reason)",
            responses=problem_responses(400, 401, 404, 409, 503))
    async def cancel(
        self,
        appointment_id: Id,
        user: UserDep,
        tx: TransactionDep,
        redis: RedisDep,
        schedule_versions: ScheduleDep,
        reason: Annotated[str | None, QueryParameter(min_length=1, max_length=500,
                                                description="Why; required when the doctor cancels")] = None,
    ) -> AppointmentOut:
        appointment, cancelled = await appointments.cancel_appointment(tx, appointment_id, user, reason, redis)
        if cancelled:
            tx.after_commit(partial(announce_schedule_change, redis, schedule_versions, appointment["doctor_id"]))
        return from_row(AppointmentOut, appointment)


async def decided_response(db: Database, row: Row, user: CurrentUser) -> Response | None:
    """For `Prefer: wait`: 201 with the appointment, 409 with the reason, or None while still pending."""
    if row["status"] == "confirmed":
        appointment = await appointments.find_appointment(db, row["appointment_id"], user)
        return Response(from_row(AppointmentOut, appointment), status_code=HTTP_201_CREATED,
                        headers={"Location": f"/appointments/{appointment['id']}"})
    if row["status"] in ("rejected", "failed"):
        raise Conflict(f"the booking was {row['status']}: {row['reason']}", reason=row["reason"],
                       request_id=row["id"], status_url=status_url(row["id"]),
                       booking_request=msgspec.to_builtins(request_out(row)))
    return None
