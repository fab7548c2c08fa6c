"""The waitlist: wait for time with a doctor; freed time is offered (a hold) or booked, first come first served."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import Body, QueryParameter
from litestar.status_codes import HTTP_201_CREATED
from msgspec import Meta

from service.api.dependencies import DatabaseDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import MAX_ID, Id, Limit, Offset, choice_filter
from service.api.problems import problem_responses
from service.api.schedule_cache import schedule_changed
from service.api.schemas import Page, page, page_example
from service.api.security import requires_patient
from service.core import waitlist
from service.core.queue import enqueue_refill
from service.core.times import from_row

EntryStatus = Literal["waiting", "offered", "booked", "expired", "cancelled"]


class WaitlistIn(msgspec.Struct, forbid_unknown_fields=True):
    """An appointment that starts and ends within [not_before, not_after] (at most 62 days ahead of the later of
    now and not_before), of the type's length, or of `duration_minutes` (30 by default)."""

    example: ClassVar[dict[str, Any]] = {"doctor_id": 7, "not_before": "2030-01-15T08:00:00Z",
                                         "not_after": "2030-01-17T18:00:00Z", "appointment_type_id": 3,
                                         "auto_book": False}

    doctor_id: Annotated[int, Meta(ge=1, le=MAX_ID)]
    not_before: datetime
    not_after: datetime
    appointment_type_id: Annotated[int, Meta(ge=1, le=MAX_ID)] | None = None
    duration_minutes: Annotated[int, Meta(ge=5, le=480, multiple_of=5)] | None = None
    auto_book: bool = False


class WaitlistEntryOut(msgspec.Struct):
    """An entry: `waiting`; `offered` (a hold, `hold_id`, until `expires_at`: confirm it with POST
    /holds/{id}/confirm); `booked` (`appointment_id`); `expired` (its range passed); `cancelled`."""

    example: ClassVar[dict[str, Any]] = {
        "id": 9, "patient_id": 12, "doctor_id": 7, "appointment_type_id": 3, "duration_minutes": 30,
        "not_before": "2030-01-15T08:00:00Z", "not_after": "2030-01-17T18:00:00Z", "auto_book": False,
        "status": "offered", "hold_id": 31, "expires_at": "2030-01-15T07:05:00Z", "appointment_id": None,
        "queued_at": "2030-01-10T16:20:00Z", "created_at": "2030-01-10T16:20:00Z", "ended_at": None}

    id: int
    patient_id: int
    doctor_id: int
    appointment_type_id: int | None
    duration_minutes: int
    not_before: datetime
    not_after: datetime
    auto_book: bool
    status: EntryStatus
    hold_id: int | None
    expires_at: datetime | None  # of the offer
    appointment_id: int | None
    queued_at: datetime  # its place in the line
    created_at: datetime
    ended_at: datetime | None


class WaitlistPage(Page):
    example: ClassVar[dict[str, Any]] = page_example(WaitlistEntryOut)

    items: list[WaitlistEntryOut]


def entry_out(row: Any) -> WaitlistEntryOut:
    return from_row(WaitlistEntryOut, {**row, "auto_book": bool(row["auto_book"]),
                                       "expires_at": row["expires_at"] if row["status"] == "offered" else None})


class WaitlistController(Controller):
    path = "/waitlist"
    tags = ["waitlist"]

    @post("/", guards=[requires_patient], status_code=HTTP_201_CREATED, operation_id="joinWaitlist",
          summary="Wait for time with a doctor",
          description=("When time frees (or appears) in the range, the first fitting entry in line is offered a hold "
                       "on it (`offered`, until `expires_at`) or, with `auto_book`, booked. An offer let lapse or "
                       "declined (DELETE /holds/{id}) sends the entry to the end of the line."),
          responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def join(self, data: Annotated[WaitlistIn, Body()], user: UserDep, tx: TransactionDep,
                   redis: RedisDep) -> WaitlistEntryOut:
        entry = await waitlist.add(tx, user, data.doctor_id, data.not_before, data.not_after,
                                   data.appointment_type_id, data.duration_minutes, data.auto_book)
        tx.after_commit(partial(enqueue_refill, redis, data.doctor_id))  # time free already is offered at once
        return entry_out(entry)

    @get("/", operation_id="listWaitlist", summary="Your waitlist entries; a doctor's (or, staff, any doctor's) line",
         responses=problem_responses(400, 401, 403, 503))
    async def list_entries(
        self, user: UserDep, db: DatabaseDep,
        doctor_id: Annotated[int | None, QueryParameter(ge=1, le=MAX_ID, description=(
            "Staff: whose line (a doctor reads only their own)"))] = None,
        status: Annotated[EntryStatus | None, choice_filter(EntryStatus, "Only entries of this status")] = None,
        limit: Limit = 50, offset: Offset = 0,
    ) -> WaitlistPage:
        rows, total = await waitlist.list_entries(db, user, doctor_id, status, limit, offset)
        return page(WaitlistPage, [entry_out(row) for row in rows], total, limit, offset)

    @delete("/{entry_id:int}", status_code=200, operation_id="leaveWaitlist",
            summary="Leave a waitlist (its live offer is released with it)",
            responses=problem_responses(400, 401, 403, 404, 503))
    async def leave(self, entry_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep,
                    schedule_versions: ScheduleDep) -> WaitlistEntryOut:
        entry, ended = await waitlist.cancel(tx, entry_id, user)
        if ended and entry["hold_id"] is not None:  # its offer's time is free again
            await schedule_changed(tx, redis, schedule_versions, entry["doctor_id"])
        return entry_out(entry)
