"""Appointment types: what a patient can book with a doctor."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta
from redis.asyncio import Redis

from service.api.dependencies import DatabaseDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import Id
from service.api.problems import problem_responses
from service.api.schedule_cache import ScheduleVersions, schedule_changed
from service.api.schemas import NOT_BLANK
from service.api.security import PUBLIC, requires_doctor, requires_doctor_or_staff
from service.core import appointment_types
from service.core.accounts import CurrentUser
from service.core.db import Connection
from service.core.times import from_row

TypeName = Annotated[str, Meta(min_length=1, max_length=100, pattern=NOT_BLANK, examples=["First visit"])]
# Multiples of 5 (the grid) are checked by the core: a JSON Schema `multipleOf` would call 215.0 an integer.
Duration = Annotated[int, Meta(ge=5, le=480, description="5 to 480 minutes, a multiple of 5")]
Buffer = Annotated[int, Meta(ge=0, le=240, description="0 to 240 minutes, a multiple of 5")]
Notice = Annotated[int, Meta(ge=0, le=30 * 24 * 60, description="0 to 43,200 minutes (30 days)")]
Horizon = Annotated[int, Meta(ge=1, le=730, description="1 to 730 days")]
CancelNotice = Annotated[int, Meta(ge=0, le=30 * 24 * 60, description=(
    "0 to 43,200 minutes (30 days): how long before the start a patient may still cancel or move an appointment "
    "of this type; null: the clinic's CANCEL_NOTICE_MINUTES"))]


class AppointmentTypeIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "name": "First visit", "duration_minutes": 40, "buffer_before_minutes": 10, "buffer_after_minutes": 10,
        "min_notice_minutes": 120, "max_days_ahead": 90}

    name: TypeName
    duration_minutes: Duration
    buffer_before_minutes: Buffer = 0
    buffer_after_minutes: Buffer = 0
    min_notice_minutes: Notice = 0
    max_days_ahead: Horizon = 365
    cancel_notice_minutes: CancelNotice | None = None


class AppointmentTypePatch(msgspec.Struct, forbid_unknown_fields=True):
    """The fields to change; a field left out stays as it is."""

    example: ClassVar[dict[str, Any]] = {"duration_minutes": 45, "min_notice_minutes": 1440}

    name: TypeName | msgspec.UnsetType = msgspec.UNSET
    duration_minutes: Duration | msgspec.UnsetType = msgspec.UNSET
    buffer_before_minutes: Buffer | msgspec.UnsetType = msgspec.UNSET
    buffer_after_minutes: Buffer | msgspec.UnsetType = msgspec.UNSET
    min_notice_minutes: Notice | msgspec.UnsetType = msgspec.UNSET
    max_days_ahead: Horizon | msgspec.UnsetType = msgspec.UNSET
    cancel_notice_minutes: CancelNotice | None | msgspec.UnsetType = msgspec.UNSET


class AppointmentTypeOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 3, "doctor_id": 7, "name": "First visit", "duration_minutes": 40, "buffer_before_minutes": 10,
        "buffer_after_minutes": 10, "min_notice_minutes": 120, "max_days_ahead": 90, "cancel_notice_minutes": 1440,
        "active": True}

    id: int
    doctor_id: int
    name: str
    duration_minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_days_ahead: int
    cancel_notice_minutes: int | None
    active: bool


CREATE_DESCRIPTION = (
    "An appointment blocks `[start − buffer_before, end + buffer_after)` of the doctor's time; it must start at least "
    "`min_notice_minutes` after it is decided and at most `max_days_ahead` days ahead.")
FOR_DOCTOR = (" Staff may do this for any doctor, a doctor only for themselves (403 otherwise); 404 if there is no "
              "such doctor, or no such type of theirs.")


class AppointmentTypeController(Controller):
    path = "/doctors"
    tags = ["schedules"]

    @post("/me/appointment-types", guards=[requires_doctor], status_code=HTTP_201_CREATED,
          operation_id="createAppointmentType", summary="Offer a kind of appointment", description=CREATE_DESCRIPTION,
          responses=problem_responses(400, 401, 403, 409, 413, 415, 503))
    async def create_mine(
        self, data: Annotated[AppointmentTypeIn, Body()], user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> AppointmentTypeOut:
        return await create(data, user.id, user, tx, redis, schedule_versions)

    @post("/{doctor_id:int}/appointment-types", guards=[requires_doctor_or_staff], status_code=HTTP_201_CREATED,
          operation_id="createDoctorAppointmentType",
          summary="Offer a kind of appointment with a doctor (staff, or the doctor)",
          description=CREATE_DESCRIPTION + FOR_DOCTOR,
          responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def create_for_doctor(
        self, doctor_id: Id, data: Annotated[AppointmentTypeIn, Body()], user: UserDep, tx: TransactionDep,
        redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> AppointmentTypeOut:
        return await create(data, doctor_id, user, tx, redis, schedule_versions)

    @patch("/me/appointment-types/{type_id:int}", guards=[requires_doctor], operation_id="updateAppointmentType",
           summary="Change an appointment type: later bookings follow the new rules",
           responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def update_mine(
        self, type_id: Id, data: Annotated[AppointmentTypePatch, Body()], user: UserDep, tx: TransactionDep,
        redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> AppointmentTypeOut:
        return await update(data, user.id, type_id, user, tx, redis, schedule_versions)

    @patch("/{doctor_id:int}/appointment-types/{type_id:int}", guards=[requires_doctor_or_staff],
           operation_id="updateDoctorAppointmentType",
           summary="Change a doctor's appointment type (staff, or the doctor)",
           description="Later bookings follow the new rules." + FOR_DOCTOR,
           responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 503))
    async def update_for_doctor(
        self, doctor_id: Id, type_id: Id, data: Annotated[AppointmentTypePatch, Body()], user: UserDep,
        tx: TransactionDep, redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> AppointmentTypeOut:
        return await update(data, doctor_id, type_id, user, tx, redis, schedule_versions)

    @delete("/me/appointment-types/{type_id:int}", guards=[requires_doctor], status_code=HTTP_204_NO_CONTENT,
            operation_id="deactivateAppointmentType",
            summary="Stop offering an appointment type (appointments made keep it)",
            responses=problem_responses(400, 401, 403, 404, 503))
    async def deactivate_mine(
        self, type_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> None:
        await deactivate(user.id, type_id, user, tx, redis, schedule_versions)

    @delete("/{doctor_id:int}/appointment-types/{type_id:int}", guards=[requires_doctor_or_staff],
            status_code=HTTP_204_NO_CONTENT, operation_id="deactivateDoctorAppointmentType",
            summary="Stop offering a doctor's appointment type (staff, or the doctor)",
            description="Appointments made keep it." + FOR_DOCTOR,
            responses=problem_responses(400, 401, 403, 404, 503))
    async def deactivate_for_doctor(
        self, doctor_id: Id, type_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> None:
        await deactivate(doctor_id, type_id, user, tx, redis, schedule_versions)

    @get("/{doctor_id:int}/appointment-types", **PUBLIC, operation_id="listAppointmentTypes",
         summary="A doctor's bookable appointment types", responses=problem_responses(400, 404, 503))
    async def list_active(self, doctor_id: Id, db: DatabaseDep) -> list[AppointmentTypeOut]:
        return [from_row(AppointmentTypeOut, row) for row in await appointment_types.list_active(db, doctor_id)]


async def create(data: AppointmentTypeIn, doctor_id: int, user: CurrentUser, tx: Connection, redis: Redis,
                 schedule_versions: ScheduleVersions) -> AppointmentTypeOut:
    values = msgspec.structs.asdict(data) | {"name": data.name.strip()}
    row = await appointment_types.create(tx, doctor_id, user, values)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)  # a new type in the directory's searches
    return from_row(AppointmentTypeOut, row)


async def update(data: AppointmentTypePatch, doctor_id: int, type_id: int, user: CurrentUser, tx: Connection,
                 redis: Redis, schedule_versions: ScheduleVersions) -> AppointmentTypeOut:
    changes = {name: value for name, value in msgspec.structs.asdict(data).items() if value is not msgspec.UNSET}
    if "name" in changes:
        changes["name"] = changes["name"].strip()
    row = await appointment_types.update(tx, doctor_id, user, type_id, changes)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)
    return from_row(AppointmentTypeOut, row)


async def deactivate(doctor_id: int, type_id: int, user: CurrentUser, tx: Connection, redis: Redis,
                     schedule_versions: ScheduleVersions) -> None:
    await appointment_types.deactivate(tx, doctor_id, user, type_id)
    await schedule_changed(tx, redis, schedule_versions, doctor_id)
