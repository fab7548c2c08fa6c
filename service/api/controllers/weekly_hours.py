"""Weekly hours: a doctor's recurring hours on their own wall clock."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, get, put
from litestar.params import Body
from msgspec import Meta
from redis.asyncio import Redis

from service.api.dependencies import DatabaseDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import Id
from service.api.problems import problem_responses
from service.api.schedule_cache import ScheduleVersions, schedule_changed
from service.api.security import PUBLIC, requires_doctor, requires_doctor_or_staff
from service.core import hours
from service.core.accounts import CurrentUser
from service.core.db import Connection
from service.core.hours import MAX_WEEKLY_INTERVALS

WallClock = Annotated[str, Meta(min_length=5, max_length=5, examples=["09:00"],
                                description="HH:MM on the doctor's wall clock, on the 5-minute grid")]


class WeeklyInterval(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"weekday": 1, "start": "09:00", "end": "12:00"}

    weekday: Annotated[int, Meta(ge=1, le=7, description="ISO weekday: 1 Monday … 7 Sunday")]
    start: WallClock
    end: Annotated[str, Meta(min_length=5, max_length=5, examples=["12:00"],
                             description="HH:MM after start on the same day; 24:00 is the midnight ending it")]


class WeeklyHoursIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"hours": [
        {"weekday": 1, "start": "09:00", "end": "12:00"}, {"weekday": 1, "start": "14:00", "end": "17:00"},
        {"weekday": 3, "start": "09:00", "end": "13:00"}]}

    hours: Annotated[list[WeeklyInterval], Meta(max_length=MAX_WEEKLY_INTERVALS)]


class WeeklyHoursOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"timezone": "Europe/Berlin", **WeeklyHoursIn.example}

    timezone: str
    hours: list[WeeklyInterval]


class WeeklyHoursController(Controller):
    path = "/doctors"
    tags = ["schedules"]

    @put("/me/weekly-hours", guards=[requires_doctor], operation_id="replaceMyWeeklyHours",
         summary="Replace your weekly hours (on your own wall clock) from now on",
         description=("Several intervals a day are fine (a gap is a break); they may not overlap. Appointments "
                      "already confirmed stay as they are. An empty list closes the week."),
         responses=problem_responses(400, 401, 403, 413, 415, 503))
    async def replace_mine(
        self, data: Annotated[WeeklyHoursIn, Body()], user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> WeeklyHoursOut:
        return await replace(data, user.id, user, tx, redis, schedule_versions)

    @put("/{doctor_id:int}/weekly-hours", guards=[requires_doctor_or_staff], operation_id="replaceWeeklyHours",
         summary="Replace a doctor's weekly hours (staff, or the doctor)",
         description=("As PUT /doctors/me/weekly-hours, for the doctor named: staff may change any doctor's, a "
                      "doctor only their own (403 otherwise). 404 if there is no such doctor."),
         responses=problem_responses(400, 401, 403, 404, 413, 415, 503))
    async def replace_for_doctor(
        self, doctor_id: Id, data: Annotated[WeeklyHoursIn, Body()], user: UserDep, tx: TransactionDep,
        redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> WeeklyHoursOut:
        return await replace(data, doctor_id, user, tx, redis, schedule_versions)

    @get("/{doctor_id:int}/weekly-hours", **PUBLIC, operation_id="getWeeklyHours",
         summary="A doctor's weekly hours and time zone", responses=problem_responses(400, 404, 503))
    async def read(self, doctor_id: Id, db: DatabaseDep) -> WeeklyHoursOut:
        timezone, rows = await hours.weekly_hours(db, doctor_id)
        return WeeklyHoursOut(timezone, [WeeklyInterval(**row) for row in rows])


async def replace(data: WeeklyHoursIn, doctor_id: int, user: CurrentUser, tx: Connection, redis: Redis,
                  schedule_versions: ScheduleVersions) -> WeeklyHoursOut:
    checked = hours.check_weekly_hours([(h.weekday, h.start, h.end) for h in data.hours])
    await hours.replace_weekly_hours(tx, doctor_id, user, checked)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)
    timezone, rows = await hours.weekly_hours(tx, doctor_id)
    return WeeklyHoursOut(timezone, [WeeklyInterval(**row) for row in rows])
