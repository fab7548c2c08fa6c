"""Slot holds: keep a slot for a few minutes, then confirm it through the queue, or let it go."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from service.api.answers import BookingAccepted, IdempotencyKey, Prefer, accepted
from service.api.dependencies import (
    BookableTypesDep,
    DatabaseDep,
    ListenerDep,
    RedisDep,
    ScheduleDep,
    SettingsDep,
    TransactionDep,
    UserDep,
)
from service.api.params import Id
from service.api.problems import problem_responses
from service.api.schedule_cache import schedule_changed
from service.api.schemas import AppointmentOut, BookingIn, HoldOut, hold_out
from service.api.security import requires_patient_or_staff
from service.core import holds, staff


class HoldIn(BookingIn):
    """What to hold: a start and an end, or a start and one of the doctor's appointment types, as for a booking."""

    example: ClassVar[dict[str, Any]] = {"doctor_id": 7, "start_time": "2030-01-15T10:00:00Z",
                                         "appointment_type_id": 3}


class HoldController(Controller):
    path = "/holds"
    tags = ["holds"]

    @post(
        "/", guards=[requires_patient_or_staff], status_code=HTTP_202_ACCEPTED, operation_id="holdSlot",
        summary="Keep a slot for a few minutes; a worker decides it like a booking",
        description=(
            "Stores a hold request and answers 202 with its status URL (whose answer carries `hold_id` once held). "
            "With `Prefer: wait=N` (N ≤ 10): 201 with the hold, or 409 with the reason: a booking's, or "
            "`too_many_holds` (HOLDS_PER_PATIENT live holds already). A held slot is busy for everyone else until "
            "`expires_at` (HOLD_SECONDS after the decision); confirm it before then. `Idempotency-Key` as for a "
            "booking. Staff hold for the patient named by `patient_id` (as for a booking), and may then read, "
            "confirm or release the hold."),
        responses={HTTP_201_CREATED: ResponseSpec(HoldOut, description="Held (with Prefer: wait)"),
                   **problem_responses(400, 401, 403, 404, 409, 413, 415, 503)},
    )
    async def hold(
        self, data: Annotated[HoldIn, Body()], user: UserDep, db: DatabaseDep, redis: RedisDep,
        listener: ListenerDep, settings: SettingsDep, bookable_types: BookableTypesDep,
        idempotency_key: IdempotencyKey = None, prefer: Prefer = None,
    ) -> Response[BookingAccepted]:
        patient_id = await staff.booking_patient(db, user, data.patient_id)
        request_id, stored = await holds.request_hold(db, settings, user, patient_id, data.doctor_id,
                                                      data.start_time, data.end_time, data.appointment_type_id,
                                                      data.notes, idempotency_key, bookable_types)
        return await accepted(db, redis, listener, user, data.doctor_id, request_id, stored, prefer)

    @get("/{hold_id:int}", operation_id="getHold", summary="One of your holds",
         responses=problem_responses(400, 401, 404, 503))
    async def get_hold(self, hold_id: Id, user: UserDep, db: DatabaseDep) -> HoldOut:
        return hold_out(await holds.find_hold(db, hold_id, user))

    @post(
        "/{hold_id:int}/confirm", status_code=HTTP_202_ACCEPTED, operation_id="confirmHold",
        summary="Turn your hold into the appointment; a worker decides it",
        description=(
            "Before `expires_at`, stores the confirmation (then certain to succeed: the held time cannot have been "
            "given away) and answers as a booking: 202 with its status URL, or with `Prefer: wait=N` 201 with the "
            "appointment. After it: 409 `hold_expired` (ask for the slot again); a hold released or confirmed "
            "already: 409 `hold_not_held`."),
        responses={HTTP_201_CREATED: ResponseSpec(AppointmentOut, description="Booked (with Prefer: wait)"),
                   **problem_responses(400, 401, 404, 409, 503)},
    )
    async def confirm(
        self, hold_id: Id, user: UserDep, db: DatabaseDep, redis: RedisDep, listener: ListenerDep,
        idempotency_key: IdempotencyKey = None, prefer: Prefer = None,
    ) -> Response[BookingAccepted]:
        request_id, stored, hold = await holds.request_confirm(db, user, hold_id, idempotency_key)
        return await accepted(db, redis, listener, user, hold["doctor_id"], request_id, stored, prefer)

    @delete("/{hold_id:int}", status_code=200, operation_id="releaseHold", summary="Let your hold go at once",
            description=("Its time is free for others at once; a waitlist offer goes to the next in line. Releasing "
                         "an ended hold answers it as it is; a confirmed one is a 409 (cancel its appointment)."),
            responses=problem_responses(400, 401, 404, 409, 503))
    async def release(self, hold_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep,
                      schedule_versions: ScheduleDep) -> HoldOut:
        hold, released = await holds.release(tx, hold_id, user)
        if released:
            await schedule_changed(tx, redis, schedule_versions, hold["doctor_id"])
        return hold_out(hold)
