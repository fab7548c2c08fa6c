"""Booking requests: the durable, pollable record of every POST /appointments."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from litestar import Controller, get
from litestar.params import QueryParameter

from service.api.dependencies import DatabaseDep, ListenerDep, UserDep
from service.api.params import Id, Limit, Offset, RequestStatusFilter
from service.api.problems import problem_responses
from service.api.schemas import BookingRequestOut, BookingRequestPage, page, request_out
from service.api.security import requires_patient
from service.core import appointments

MAX_POLL_SECONDS = 30


class BookingRequestController(Controller):
    path = "/booking-requests"
    tags = ["booking requests"]

    # No role guard: anyone but the request's patient, or the staff member who asked for it on the patient's behalf,
    # gets the same 404, a doctor included.
    @get("/{request_id:int}", operation_id="getBookingRequest", summary="A booking request's status",
         description=("For its patient, and for the staff member who booked it on the patient's behalf; 404 for "
                      "anyone else."),
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
        read = partial(appointments.read_own_request, db, request_id, user.id)
        return request_out(await listener.wait_for_decision(request_id, user.id, read, wait))

    @get("/", guards=[requires_patient], operation_id="listBookingRequests",
         summary="Your booking requests, newest first", responses=problem_responses(400, 401, 403, 503))
    async def list_requests(
        self, user: UserDep, db: DatabaseDep, status: RequestStatusFilter = None, limit: Limit = 50,
        offset: Offset = 0,
    ) -> BookingRequestPage:
        rows, total = await appointments.list_requests(db, user.id, status, limit, offset)
        return page(BookingRequestPage, [request_out(row) for row in rows], total, limit, offset)
