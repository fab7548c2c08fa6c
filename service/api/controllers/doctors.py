"""Doctors: the directory, availability windows, bookable slots and the doctor's own schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.params import Body, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta

from service.api.dependencies import DatabaseDep, DirectoryCacheDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.api.params import MAX_ID, AppointmentStatusFilter, From, Id, Limit, Offset, To, next_page_link, query_time
from service.api.problems import problem_responses
from service.api.schedule_cache import CACHE_SECONDS, schedule_changed
from service.api.schemas import AppointmentPage, Page, Specialty, TimeZoneName, appointments_page, page, page_example
from service.api.security import PUBLIC, requires_doctor
from service.core import directory, doctors, hours, schedule
from service.core import windows as windows_
from service.core.errors import InvalidInput
from service.core.schedule import Interval, Slot
from service.core.times import from_row, parse_time, to_db, utcnow
from service.core.windows import MAX_WINDOWS_PER_REQUEST


class DoctorOut(msgspec.Struct):
    """A doctor's public profile: no login email (a doctor sees their own at /auth/me)."""

    example: ClassVar[dict[str, Any]] = {
        "id": 7, "name": "Dr Ada Weber", "specialty": "Cardiology", "timezone": "Europe/Berlin",
        "created_at": "2029-11-02T08:30:00Z", "next_available_slot": {
            "start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T09:30:00Z",
            "local_start_time": "2030-01-15T10:00:00+01:00", "local_end_time": "2030-01-15T10:30:00+01:00",
            "availability_id": 31}}

    id: int
    name: str
    specialty: str | None
    timezone: str
    created_at: datetime
    # In the directory, when asked for (available_after, sort=next_available or appointment_type_name).
    next_available_slot: Slot | None | msgspec.UnsetType = msgspec.UNSET


class DoctorPage(Page):
    example: ClassVar[dict[str, Any]] = page_example(DoctorOut)

    items: list[DoctorOut]


class DoctorPatch(msgspec.Struct, forbid_unknown_fields=True):
    """The fields to change; a field left out stays as it is."""

    example: ClassVar[dict[str, Any]] = {"specialty": "Cardiology", "timezone": "Europe/Berlin"}

    specialty: Specialty | None | msgspec.UnsetType = msgspec.UNSET
    timezone: TimeZoneName | msgspec.UnsetType = msgspec.UNSET


class WindowIn(msgspec.Struct, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T12:00:00Z"}

    start_time: datetime
    end_time: datetime


class WindowOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "id": 31, "doctor_id": 7, "start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T12:00:00Z"}

    id: int
    doctor_id: int
    start_time: datetime
    end_time: datetime


class AvailabilityOut(msgspec.Struct):
    """An available interval (weekly hours ∪ windows − time off) and its free parts. `id` is the one-off window it
    comes from, if it comes from one alone."""

    example: ClassVar[dict[str, Any]] = {
        "id": 31, "doctor_id": 7, "start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T12:00:00Z",
        "local_start_time": "2030-01-15T10:00:00+01:00", "local_end_time": "2030-01-15T13:00:00+01:00",
        "free": [{"start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T10:00:00Z"},
                 {"start_time": "2030-01-15T10:30:00Z", "end_time": "2030-01-15T12:00:00Z"}]}

    id: int | None
    doctor_id: int
    start_time: datetime
    end_time: datetime
    local_start_time: datetime
    local_end_time: datetime
    free: list[Interval]


class SlotsOut(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {
        "doctor_id": 7, "duration": 30, "next_from": None, "slots": [
            {"start_time": "2030-01-15T09:00:00Z", "end_time": "2030-01-15T09:30:00Z",
             "local_start_time": "2030-01-15T10:00:00+01:00", "local_end_time": "2030-01-15T10:30:00+01:00",
             "availability_id": 31},
            {"start_time": "2030-01-15T09:30:00Z", "end_time": "2030-01-15T10:00:00Z",
             "local_start_time": "2030-01-15T10:30:00+01:00", "local_end_time": "2030-01-15T11:00:00+01:00",
             "availability_id": 31}]}

    doctor_id: int
    duration: int
    slots: list[Slot]
    next_from: datetime | None = msgspec.field(default=None)


PageSize = Annotated[int, QueryParameter(ge=1, le=schedule.MAX_PAGE, description=(
    f"Items in one answer (at most {schedule.MAX_PAGE}); when there are more, the `Link` header's rel=\"next\" "
    "URL reads on from the next one"))]
NEXT_PAGE_HEADER = [ResponseHeader(name="Link", required=False, documentation_only=True, description=(
    'RFC 8288 `<url>; rel="next"` when the answer was cut at `limit`: the same read from the next item'))]


WindowsIn = Annotated[list[WindowIn], Meta(min_length=1, max_length=MAX_WINDOWS_PER_REQUEST)]
# The OpenAPI document loses WindowsIn's bounds (Litestar drops the Meta of a union member); these keywords restore
# them next to the `oneOf`, where they constrain arrays only.
WINDOWS_BOUNDS = {"minItems": 1, "maxItems": MAX_WINDOWS_PER_REQUEST}


class DoctorController(Controller):
    path = "/doctors"
    tags = ["doctors"]

    @get("/", **PUBLIC, operation_id="listDoctors",
         summary="The directory: doctors by name, specialty or appointment type, with their next free slot",
         description=("With `available_after`, `appointment_type_name` or `sort=next_available`, each doctor carries "
                      "`next_available_slot`: the first bookable slot starting at or after `available_after` (now "
                      "by default) within 62 days, of the doctor's active type of that name (its length and rules) "
                      "or of 30 minutes. `sort=next_available` ranks by it, soonest first, doctors without one "
                      f"last (at most {directory.MAX_SORTED} matching doctors)."),
         responses=problem_responses(400, 503))
    async def list_doctors(
        self,
        db: DatabaseDep,
        directory_cache: DirectoryCacheDep,
        q: Annotated[str | None, QueryParameter(max_length=255, description="Part of the doctor's name")] = None,
        specialty: Annotated[str | None, QueryParameter(max_length=100)] = None,
        appointment_type_name: Annotated[str | None, QueryParameter(
            min_length=1, max_length=100, description="Only doctors offering an active type of this name")] = None,
        available_after: Annotated[str | None, query_time("available_after", (
            "Look for each doctor's next free slot from this instant (RFC 3339)"), "2030-01-15T09:00:00Z")] = None,
        sort: Annotated[Literal["name", "next_available"], QueryParameter(description="The order")] = "name",
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> DoctorPage:
        if available_after is None and appointment_type_name is None and sort == "name":
            rows, total = await doctors.list_doctors(db, q, specialty, limit, offset)
            return page(DoctorPage, [from_row(DoctorOut, row) for row in rows], total, limit, offset)
        after = (None if available_after is None  # `available_after=` is no time: a 400, as for `from` and `to`
                 else to_db(parse_time(available_after, "available_after"), "available_after"))
        found, total = await directory.search(db, q, specialty, appointment_type_name, after,
                                              sort == "next_available", limit, offset, directory_cache)
        return page(DoctorPage, [from_row(DoctorOut, {**row, "next_available_slot": slot}) for row, slot in found],
                    total, limit, offset)

    @get("/{doctor_id:int}", **PUBLIC, operation_id="getDoctor", summary="A doctor's profile",
         responses=problem_responses(400, 404, 503))
    async def get_doctor(self, doctor_id: Id, db: DatabaseDep) -> DoctorOut:
        return from_row(DoctorOut, await doctors.find_doctor(db, doctor_id))

    @patch("/me", guards=[requires_doctor], operation_id="updateMyDoctorProfile",
           summary="Change your specialty or time zone", responses=problem_responses(400, 401, 403, 413, 415, 503))
    async def update_me(
        self, data: Annotated[DoctorPatch, Body()], user: UserDep, tx: TransactionDep, redis: RedisDep,
        schedule_versions: ScheduleDep,
    ) -> DoctorOut:
        if data.timezone is not msgspec.UNSET:  # weekly hours now mean other instants
            await hours.set_timezone(tx, user.id, data.timezone.value)
        if data.specialty is not msgspec.UNSET:  # the directory lists the doctor under another specialty
            await doctors.update_specialty(tx, user.id, data.specialty)
        if data.timezone is not msgspec.UNSET or data.specialty is not msgspec.UNSET:
            await schedule_changed(tx, redis, schedule_versions, user.id)
        return from_row(DoctorOut, await doctors.find_doctor(tx, user.id))

    @post("/availability", guards=[requires_doctor], status_code=HTTP_201_CREATED,
          operation_id="addAvailability", summary="Publish one window, or several all-or-none",
          responses=problem_responses(400, 401, 403, 409, 413, 415, 503))
    async def add_availability(
        self, data: Annotated[WindowIn | WindowsIn, Body(schema_extra=WINDOWS_BOUNDS)], user: UserDep,
        tx: TransactionDep, redis: RedisDep, schedule_versions: ScheduleDep,
    ) -> WindowOut | list[WindowOut]:
        one = isinstance(data, WindowIn)
        windows = [data] if one else data
        # Litestar drops the Meta of a union member, so WindowsIn's length bounds are checked here.
        if not 1 <= len(windows) <= MAX_WINDOWS_PER_REQUEST:
            raise InvalidInput(f"send 1 to {MAX_WINDOWS_PER_REQUEST} windows", field="body")
        now = utcnow()
        checked = [windows_.check_window(w.start_time, w.end_time, "" if one else f"[{i}].", now)
                   for i, w in enumerate(windows)]
        await schedule_changed(tx, redis, schedule_versions, user.id)
        created = [from_row(WindowOut, row) for row in await windows_.add_windows(tx, user.id, checked, now)]
        return created[0] if one else created

    @delete("/availability/{availability_id:int}", guards=[requires_doctor], status_code=HTTP_204_NO_CONTENT,
            operation_id="deleteAvailability", summary="Withdraw a window that has no confirmed appointment",
            responses=problem_responses(400, 401, 403, 404, 409, 503))
    async def delete_availability(
        self, availability_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep, schedule_versions: ScheduleDep
    ) -> None:
        await schedule_changed(tx, redis, schedule_versions, user.id)
        await windows_.delete_window(tx, user.id, availability_id)
        return None

    @get("/{doctor_id:int}/availability", **PUBLIC, cache=CACHE_SECONDS, operation_id="getDoctorAvailability",
         summary="A doctor's available intervals in a range, each with its free parts",
         description=("Available intervals are weekly hours ∪ one-off windows − time off. Without `from` and `to`: "
                      f"the next intervals with free time from now, however far ahead (`limit`, default "
                      f"{schedule.DEFAULT_NEXT_AVAILABLE}); with a range, all of it (`limit`, default "
                      f"{schedule.DEFAULT_PAGE})."),
         response_headers=NEXT_PAGE_HEADER, responses=problem_responses(400, 404, 503))
    async def get_availability(
        self, request: Request, doctor_id: Id, db: DatabaseDep, start: From = None, end: To = None,
        limit: Annotated[int | None, QueryParameter(ge=1, le=schedule.MAX_PAGE, description=(
            f"Items in one answer (at most {schedule.MAX_PAGE}); when there are more, the `Link` header's "
            "rel=\"next\" URL reads on from the next one"))] = None,
    ) -> Response[list[AvailabilityOut]]:
        found = await schedule.availability(db, doctor_id, start, end, limit)
        return Response([from_row(AvailabilityOut, w) for w in found.items],
                        headers=next_page_link(request, found.next_from))

    @get("/{doctor_id:int}/slots", **PUBLIC, cache=CACHE_SECONDS, operation_id="getDoctorSlots",
         summary="Bookable slots, of an appointment type or of a given length",
         description=("Slots step by their length from the start of each available interval (weekly hours ∪ "
                      "windows − time off), leaving out what conflicts with confirmed appointments (buffers "
                      "included), past starts, and, for a type, starts inside its notice period or beyond its "
                      "horizon. Times in UTC and on the doctor's wall clock (`local_*`)."),
         response_headers=NEXT_PAGE_HEADER, responses=problem_responses(400, 404, 503))
    async def get_slots(
        self,
        request: Request,
        doctor_id: Id,
        db: DatabaseDep,
        start: From = None,
        end: To = None,
        appointment_type_id: Annotated[int | None, QueryParameter(
            ge=1, le=MAX_ID, description="One of the doctor's appointment types: its length and rules")] = None,
        duration: Annotated[int | None, QueryParameter(ge=5, le=480, multiple_of=5, description=(
            "Without a type: slot length in minutes, a multiple of 5 (default 30)"))] = None,
        limit: PageSize = schedule.DEFAULT_PAGE,
    ) -> Response[SlotsOut]:
        if appointment_type_id is not None and duration is not None:
            raise InvalidInput("give either duration or appointment_type_id", field="duration")
        found, length = await schedule.slots(db, doctor_id, start, end, duration or 30, appointment_type_id, limit)
        return Response(SlotsOut(doctor_id=doctor_id, duration=length, slots=found.items, next_from=found.next_from),
                        headers=next_page_link(request, found.next_from))

    @get("/my-appointments", guards=[requires_doctor], operation_id="listMyDoctorAppointments",
         summary="Your schedule, with each patient's name", responses=problem_responses(400, 401, 403, 503))
    async def my_appointments(
        self, user: UserDep, db: DatabaseDep, start: From = None, end: To = None,
        status: AppointmentStatusFilter = None, limit: Limit = 50, offset: Offset = 0,
    ) -> AppointmentPage:
        return await appointments_page(db, user, status, start, end, limit, offset)
