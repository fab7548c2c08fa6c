"""Doctors: the directory, availability windows, bookable slots and the doctor's own schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import Body, FromQuery, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta

from service.accounts import Specialty
from service.appointments import AppointmentPage, AppointmentStatus, list_appointments
from service.db import Connection, Database
from service.dependencies import DatabaseDep, RedisDep, ScheduleDep, TransactionDep, UserDep
from service.errors import Conflict, InvalidInput, NotFound, problem_responses
from service.paging import From, Id, Limit, Offset, To, time_range
from service.schedule import CACHE_SECONDS, announce_schedule_change
from service.security import PUBLIC, requires_doctor
from service.times import from_row, overlaps, to_db, utcnow

MAX_WINDOW = timedelta(hours=24)
MAX_RANGE = timedelta(days=62)
DEFAULT_RANGE = timedelta(days=14)


class DoctorOut(msgspec.Struct):
    id: int
    name: str
    email: str
    specialty: str | None
    created_at: datetime


class DoctorPage(msgspec.Struct):
    items: list[DoctorOut]
    total: int
    limit: int
    offset: int


class DoctorPatch(msgspec.Struct, forbid_unknown_fields=True):
    specialty: Specialty | None


class WindowIn(msgspec.Struct, forbid_unknown_fields=True):
    start_time: datetime
    end_time: datetime


class WindowOut(msgspec.Struct):
    id: int
    doctor_id: int
    start_time: datetime
    end_time: datetime


class Interval(msgspec.Struct):
    start_time: datetime
    end_time: datetime


class AvailabilityOut(msgspec.Struct):
    id: int
    doctor_id: int
    start_time: datetime
    end_time: datetime
    free: list[Interval]


class SlotOut(msgspec.Struct):
    start_time: datetime
    end_time: datetime
    availability_id: int


class SlotsOut(msgspec.Struct):
    doctor_id: int
    duration: int
    slots: list[SlotOut]


MAX_WINDOWS = 100
WindowsIn = Annotated[list[WindowIn], Meta(min_length=1, max_length=MAX_WINDOWS)]
# The OpenAPI document loses WindowsIn's bounds (Litestar drops the Meta of a union member); these keywords restore
# them next to the `oneOf`, where they constrain arrays only.
WINDOWS_BOUNDS = {"minItems": 1, "maxItems": MAX_WINDOWS}


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class DoctorController(Controller):
    path = "/doctors"
    tags = ["doctors"]

    @get("/", **PUBLIC, operation_id="listDoctors", summary="List doctors, optionally by name or specialty",
         responses=problem_responses(400, 503))
    async def list_doctors(
        self,
        db: DatabaseDep,
        q: Annotated[str | None, QueryParameter(max_length=255, description="Part of the doctor's name")] = None,
        specialty: Annotated[str | None, QueryParameter(max_length=100)] = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> DoctorPage:
        filters = {"name_like": like_pattern(q) if q else None, "specialty": specialty}
        async with db.connection() as conn:
            rows = await conn.fetch_all("list_doctors", {**filters, "limit": limit, "offset": offset})
            total = await conn.fetch_value("count_doctors", filters)
        return DoctorPage([from_row(DoctorOut, r) for r in rows], total=total, limit=limit, offset=offset)

    @get("/{doctor_id:int}", **PUBLIC, operation_id="getDoctor", summary="A doctor's profile",
         responses=problem_responses(400, 404, 503))
    async def get_doctor(self, doctor_id: Id, db: DatabaseDep) -> DoctorOut:
        return from_row(DoctorOut, await find_doctor(db, doctor_id))

    @patch("/me", guards=[requires_doctor], operation_id="updateMyDoctorProfile", summary="Change your specialty",
           responses=problem_responses(400, 401, 403, 413, 415, 503))
    async def update_me(self, data: Annotated[DoctorPatch, Body()], user: UserDep, tx: TransactionDep) -> DoctorOut:
        specialty = data.specialty.strip() if data.specialty else None
        await tx.execute("update_doctor_specialty", {"id": user.id, "specialty": specialty})
        return from_row(DoctorOut, await find_doctor(tx, user.id))

    @post("/availability", guards=[requires_doctor], status_code=HTTP_201_CREATED,
          operation_id="addAvailability", summary="Publish one window, or several all-or-none",
          responses=problem_responses(400, 401, 403, 409, 413, 415, 503))
    async def add_availability(
        self, data: Annotated[WindowIn | WindowsIn, Body(schema_extra=WINDOWS_BOUNDS)], user: UserDep,
        tx: TransactionDep, redis: RedisDep, schedule: ScheduleDep,
    ) -> WindowOut | list[WindowOut]:
        windows = [data] if isinstance(data, WindowIn) else data
        # Litestar drops the Meta of a union member, so WindowsIn's length bounds are checked here.
        if not 1 <= len(windows) <= MAX_WINDOWS:
            raise InvalidInput(f"send 1 to {MAX_WINDOWS} windows", field="body")
        now = utcnow()
        checked = [check_window(window, index if isinstance(data, list) else None, now)
                   for index, window in enumerate(windows)]
        for i, (start, end) in enumerate(checked):
            for other_start, other_end in checked[:i]:
                if overlaps(start, end, other_start, other_end):
                    raise Conflict("two of the windows sent overlap each other")
        # Same row lock as booking: a window cannot change while a booking into it is being decided.
        await tx.fetch_one("lock_doctor", {"doctor_id": user.id})
        tx.after_commit(partial(announce_schedule_change, redis, schedule, user.id))
        created = []
        for start, end in checked:
            params = {"doctor_id": user.id, "start_time": start, "end_time": end}
            in_the_way = await tx.fetch_one("find_overlapping_availability", params)
            if in_the_way:
                raise Conflict("the window overlaps one you already published",
                               conflicting_window=msgspec.to_builtins(from_row(Interval, in_the_way)) | {
                                   "id": in_the_way["id"]})
            _, window_id = await tx.execute("insert_availability", {**params, "created_at": now})
            created.append(from_row(WindowOut, {**params, "id": window_id}))
        return created[0] if isinstance(data, WindowIn) else created

    @delete("/availability/{availability_id:int}", guards=[requires_doctor], status_code=HTTP_204_NO_CONTENT,
            operation_id="deleteAvailability", summary="Withdraw a window that has no confirmed appointment",
            responses=problem_responses(400, 401, 403, 404, 409, 503))
    async def delete_availability(
        self, availability_id: Id, user: UserDep, tx: TransactionDep, redis: RedisDep, schedule: ScheduleDep
    ) -> None:
        await tx.fetch_one("lock_doctor", {"doctor_id": user.id})
        tx.after_commit(partial(announce_schedule_change, redis, schedule, user.id))
        window = await tx.fetch_one("find_availability", {"id": availability_id})
        if window is None or window["doctor_id"] != user.id:
            raise NotFound("no such availability window of yours")
        if await tx.fetch_one("find_confirmed_appointment_in_window", window):
            raise Conflict("a confirmed appointment lies inside this window; cancel it first")
        await tx.execute("delete_availability", {"id": availability_id})
        return None

    @get("/{doctor_id:int}/availability", **PUBLIC, cache=CACHE_SECONDS, operation_id="getDoctorAvailability",
         summary="A doctor's windows in a range, each with its free intervals",
         responses=problem_responses(400, 404, 503))
    async def get_availability(
        self, doctor_id: Id, db: DatabaseDep, start: From = None, end: To = None
    ) -> list[AvailabilityOut]:
        windows, busy = await windows_and_busy(db, doctor_id, start, end)
        return [
            from_row(AvailabilityOut, {**w, "free": [from_row(Interval, {"start_time": s, "end_time": e})
                                                      for s, e in free_intervals(w, busy)]})
            for w in windows
        ]

    @get("/{doctor_id:int}/slots", **PUBLIC, cache=CACHE_SECONDS, operation_id="getDoctorSlots",
         summary="Bookable slots of a given length, aligned to each window's start",
         responses=problem_responses(400, 404, 503))
    async def get_slots(
        self,
        doctor_id: Id,
        db: DatabaseDep,
        start: From = None,
        end: To = None,
        duration: Annotated[int, QueryParameter(ge=5, le=480, description="Slot length in minutes")] = 30,
    ) -> SlotsOut:
        windows, busy = await windows_and_busy(db, doctor_id, start, end)
        range_start, range_end = resolve_range(start, end)
        earliest = max(range_start, utcnow())
        step = timedelta(minutes=duration)
        return SlotsOut(doctor_id=doctor_id, duration=duration,
                        slots=bookable_slots(windows, busy, step, earliest, range_end))

    @get("/my-appointments", guards=[requires_doctor], operation_id="listMyDoctorAppointments",
         summary="Your schedule, with each patient's name", responses=problem_responses(400, 401, 403, 503))
    async def my_appointments(
        self, user: UserDep, db: DatabaseDep, start: From = None, end: To = None,
        status: FromQuery[AppointmentStatus | None] = None, limit: Limit = 50, offset: Offset = 0,
    ) -> AppointmentPage:
        return await list_appointments(db, user, status, start, end, limit, offset)


async def find_doctor(db: Database | Connection, doctor_id: int) -> dict:
    doctor = await db.fetch_one("find_doctor", {"id": doctor_id})
    if doctor is None:
        raise NotFound(f"no doctor with id {doctor_id}")
    return doctor


def check_window(window: WindowIn, index: int | None, now: datetime) -> tuple[datetime, datetime]:
    prefix = f"[{index}]." if index is not None else ""
    start = to_db(window.start_time, prefix + "start_time")
    end = to_db(window.end_time, prefix + "end_time")
    if end <= start:
        raise InvalidInput("must be after start_time", field=prefix + "end_time")
    if start <= now:
        raise InvalidInput("must be in the future", field=prefix + "start_time")
    if end - start > MAX_WINDOW:
        raise InvalidInput("a window is at most 24 hours long", field=prefix + "end_time")
    return start, end


def resolve_range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The [from, to) of a schedule read: from now by default, two weeks long by default, at most 62 days."""
    range_start, range_end = time_range(start, end)
    range_start = range_start or utcnow()
    range_end = range_end or range_start + min(DEFAULT_RANGE, datetime.max - range_start)  # year 9999 ends
    if range_end <= range_start:
        raise InvalidInput("must be after from", field="to")
    if range_end - range_start > MAX_RANGE:
        raise InvalidInput("the range is at most 62 days", field="to")
    return range_start, range_end


async def windows_and_busy(
    db: Database, doctor_id: int, start: str | None, end: str | None
) -> tuple[list[dict], list[tuple[datetime, datetime]]]:
    """The doctor's windows in the range and the confirmed appointments among them, in one query."""
    range_start, range_end = resolve_range(start, end)
    rows = await db.fetch_all("list_windows_and_busy_in_range",
                              {"doctor_id": doctor_id, "from": range_start, "to": range_end})
    windows = [row for row in rows if row["kind"] == "window"]
    if not windows:
        await find_doctor(db, doctor_id)  # 404 for an unknown doctor, [] for one with no windows
    busy = [(row["start_time"], row["end_time"]) for row in rows if row["kind"] == "busy"]
    return windows, busy


def free_intervals(window: dict, busy: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The window less the (sorted, non-overlapping) busy intervals."""
    free = []
    cursor = window["start_time"]
    for busy_start, busy_end in busy:
        if busy_end <= cursor or busy_start >= window["end_time"]:
            continue
        if busy_start > cursor:
            free.append((cursor, busy_start))
        cursor = max(cursor, busy_end)
    if cursor < window["end_time"]:
        free.append((cursor, window["end_time"]))
    return free


def bookable_slots(
    windows: list[dict], busy: list[tuple[datetime, datetime]], step: timedelta, earliest: datetime,
    latest: datetime,
) -> list[SlotOut]:
    """Slots of `step` from each window's start that overlap no busy interval and lie in [earliest, latest).

    The hottest read of the API: one datetime addition per slot, and times made UTC-aware once per interval.
    """
    earliest, latest = earliest.replace(tzinfo=UTC), latest.replace(tzinfo=UTC)
    slots = []
    for window in windows:
        grid_start = window["start_time"].replace(tzinfo=UTC)
        for free_start, free_end in free_intervals(window, busy):
            free_start, free_end = free_start.replace(tzinfo=UTC), free_end.replace(tzinfo=UTC)
            try:
                # Keep the window's grid: the first grid point at or after the free interval's start.
                start = grid_start + -((grid_start - free_start) // step) * step
                end = start + step
                while end <= free_end:
                    if start >= earliest and end <= latest:
                        slots.append(SlotOut(start_time=start, end_time=end, availability_id=window["id"]))
                    start, end = end, end + step
            except OverflowError:  # the next slot would end after 9999-12-31: there is none
                pass
    return slots
