"""Time off: periods a doctor is away; nothing inside them is offered or booked."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta
from redis.asyncio import Redis

from service.api.dependencies import DatabaseDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import Id, Limit, Offset
from service.api.problems import problem_responses
from service.api.schedule_cache import ScheduleVersions, schedule_changed
from service.api.security import requires_doctor, requires_doctor_or_staff
from service.core import hours
from service.core.accounts import CurrentUser
from service.core.db import Connection
from service.core.times import from_row, utcnow


class TimeOffIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "start_time": "2030-02-04T00:00:00Z", "end_time": "2030-02-09T00:00:00Z", "reason": "Cardiology congress",
        "cancel_appointments": False}

    start_time: datetime
    end_time: datetime
    reason: Annotated[str, Meta(max_length=500)] | None = None
    cancel_appointments: bool = msgspec.field(default=False)


class TimeOffOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 5, "doctor_id": 7, "start_time": "2030-02-04T00:00:00Z", "end_time": "2030-02-09T00:00:00Z",
        "reason": "Cardiology congress", "created_at": "2030-01-10T16:20:00Z"}

    id: int
    doctor_id: int
    start_time: datetime
    end_time: datetime
    reason: str | None
    created_at: datetime


class TimeOffCreated(TimeOffOut):
    example: ClassVar[dict[str, Any]] = {**TimeOffOut.example, "cancelled_appointment_ids": []}

    cancelled_appointment_ids: list[int] = msgspec.field(default_factory=list)


ADD_DESCRIPTION = ("No slot inside it is offered or booked. Confirmed appointments inside it are a 409 listing them, "
                   "unless `cancel_appointments` is true and a `reason` is given: then they are cancelled with that "
                   "reason, in the same transaction.")
FOR_DOCTOR = (" Staff may do this for any doctor, a doctor only for themselves (403 otherwise); 404 if there is no "
              "such doctor.")


class TimeOffController(Controller):
    path = "/doctors"
    tags = ["schedules"]

    @post("/me/time-off", guards=[requires_doctor], status_code=HTTP_201_CREATED, operation_id="addTimeOff",
          summary="Take time off", description=ADD_DESCRIPTION,
          responses=problem_responses(400, 401, 403, 409, 413, 415, 503))
    async def add_mine(
        self, data: Annotated[TimeOffIn, Body()], user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> TimeOffCreated:
        return await add(data, user.id, user, tx, redis, schedule_versions)

    @post("/{doctor_id:int}/time-off", guards=[requires_doctor_or_staff], status_code=HTTP_201_CREATED,
          operation_id="addDoctorTimeOff", summary="Put a doctor on time off (staff, or the doctor)",
          description=ADD_DESCRIPTION + FOR_DOCTOR,
          responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def add_for_doctor(
        self, doctor_id: Id, data: Annotated[TimeOffIn, Body()], user: UserDep, tx: TransactionDep,
        redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> TimeOffCreated:
        return await add(data, doctor_id, user, tx, redis, schedule_versions)

    @get("/me/time-off", guards=[requires_doctor], operation_id="listMyTimeOff",
         summary="Your time off that is not over yet, soonest first",
         responses=problem_responses(400, 401, 403, 503))
    async def list_mine(
        self, user: UserDep, db: DatabaseDep, limit: Limit = 50, offset: Offset = 0
    ) -> list[TimeOffOut]:
        rows = await hours.list_time_off(db, user.id, user, utcnow(), limit, offset)
        return [from_row(TimeOffOut, row) for row in rows]

    @get("/{doctor_id:int}/time-off", guards=[requires_doctor_or_staff], operation_id="listDoctorTimeOff",
         summary="A doctor's time off that is not over yet, soonest first (staff, or the doctor)",
         description="Time off and its reasons are the doctor's and staff's only." + FOR_DOCTOR,
         responses=problem_responses(400, 401, 403, 404, 503))
    async def list_for_doctor(
        self, doctor_id: Id, user: UserDep, db: DatabaseDep, limit: Limit = 50, offset: Offset = 0
    ) -> list[TimeOffOut]:
        rows = await hours.list_time_off(db, doctor_id, user, utcnow(), limit, offset)
        return [from_row(TimeOffOut, row) for row in rows]

    @delete("/me/time-off/{time_off_id:int}", guards=[requires_doctor], status_code=HTTP_204_NO_CONTENT,
            operation_id="deleteTimeOff",
            summary="Withdraw time off: its time becomes bookable again",
            responses=problem_responses(400, 401, 403, 404, 503))
    async def withdraw_mine(
        self, time_off_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> None:
        await withdraw(time_off_id, user.id, user, tx, redis, schedule_versions)

    @delete("/{doctor_id:int}/time-off/{time_off_id:int}", guards=[requires_doctor_or_staff],
            status_code=HTTP_204_NO_CONTENT, operation_id="deleteDoctorTimeOff",
            summary="Withdraw a doctor's time off (staff, or the doctor)",
            description="Its time becomes bookable again." + FOR_DOCTOR + " 404 too for time off of another doctor.",
            responses=problem_responses(400, 401, 403, 404, 503))
    async def withdraw_for_doctor(
        self, doctor_id: Id, time_off_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> None:
        await withdraw(time_off_id, doctor_id, user, tx, redis, schedule_versions)


async def add(data: TimeOffIn, doctor_id: int, user: CurrentUser, tx: Connection, redis: Redis,
              schedule_versions: ScheduleVersions) -> TimeOffCreated:
    start, end = hours.check_time_off(data.start_time, data.end_time, utcnow())
    row, cancelled = await hours.add_time_off(tx, doctor_id, user, start, end, data.reason, data.cancel_appointments,
                                              redis)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)
    return from_row(TimeOffCreated, {**row, "cancelled_appointment_ids": [a["id"] for a in cancelled]})


async def withdraw(time_off_id: int, doctor_id: int, user: CurrentUser, tx: Connection, redis: Redis,
                   schedule_versions: ScheduleVersions) -> None:
    await hours.delete_time_off(tx, doctor_id, user, time_off_id)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)
