"""Booking requests: the durable, pollable record of every POST /appointments."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter

from service.db import Database, Row
from service.dependencies import DatabaseDep, ListenerDep, UserDep
from service.errors import NotFound, problem_responses
from service.notify import Notifications
from service.paging import Id, Limit, Offset
from service.security import requires_patient
from service.times import from_row

RequestStatus = Literal["pending", "confirmed", "rejected", "failed"]
MAX_POLL_SECONDS = 30


class BookingRequestOut(msgspec.Struct):
    request_id: int
    status: RequestStatus
    doctor_id: int
    start_time: datetime
    end_time: datetime
    notes: str | None
    appointment_id: int | None
    reason: str | None = msgspec.field(default=None)
    created_at: datetime | None = None
    decided_at: datetime | None = None


class BookingRequestPage(msgspec.Struct):
    items: list[BookingRequestOut]
    total: int
    limit: int
    offset: int


def status_url(request_id: int) -> str:
    return f"/booking-requests/{request_id}"


def to_out(row: Row) -> BookingRequestOut:
    return from_row(BookingRequestOut, {**row, "request_id": row["id"]})


async def read_own_request(db: Database, request_id: int, patient_id: int) -> Row:
    """The request if it is this patient's; 404 otherwise, so others cannot even learn that it exists."""
    row = await db.fetch_one("find_booking_request_for_patient", {"id": request_id, "patient_id": patient_id})
    if row is None:
        raise NotFound(f"no booking request {request_id} of yours")
    return row


async def wait_for_decision(
    db: Database, listener: Notifications, request_id: int, patient_id: int, timeout: float
) -> Row:
    """The request once it leaves `pending`, or as it stands when `timeout` seconds have passed."""
    return await listener.wait_for_decision(request_id, patient_id,
                                            partial(read_own_request, db, request_id, patient_id), timeout)


class BookingRequestController(Controller):
    path = "/booking-requests"
    tags = ["booking requests"]

    # No role guard: anyone but the request's patient gets the same 404, a doctor included.
    @get("/{request_id:int}", operation_id="getBookingRequest", summary="A booking request's status",
         responses=problem_responses(400, 401, 404, 503))
    async def get_request(
        self,
        request_id: Id,
        user: UserDep,
        db: DatabaseDep,
        listener: ListenerDep,
        wait: Annotated[int, QueryParameter(ge=0, le=MAX_POLL_SECONDS, description=(
            "Long polling: answer as soon as the status leaves pending, or after this many seconds"))] = 0,
    ) -> BookingRequestOut:
        return to_out(await wait_for_decision(db, listener, request_id, user.id, wait))

    @get("/", guards=[requires_patient], operation_id="listBookingRequests",
         summary="Your booking requests, newest first", responses=problem_responses(400, 401, 403, 503))
    async def list_requests(
        self, user: UserDep, db: DatabaseDep, status: FromQuery[RequestStatus | None] = None, limit: Limit = 50,
        offset: Offset = 0,
    ) -> BookingRequestPage:
        params = {"patient_id": user.id, "status": status}
        async with db.connection() as conn:
            rows = await conn.fetch_all("list_booking_requests_for_patient", {**params, "limit": limit,
                                                                                "offset": offset})
            total = await conn.fetch_value("count_booking_requests_for_patient", params)
        return BookingRequestPage([to_out(r) for r in rows], total=total, limit=limit, offset=offset)
