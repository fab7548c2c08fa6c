"""A doctor's schedule: availability windows, their free intervals, and the bookable slots in a range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import msgspec

from service.core.availability import DoctorTime
from service.core.db import Connection, Database, Row
from service.core.doctors import find_doctor
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.times import from_row, on_grid, overlaps, time_range, to_db, utcnow

T = TypeVar("T")

MAX_WINDOW = timedelta(hours=24)
MAX_RANGE = timedelta(days=62)
DEFAULT_RANGE = timedelta(days=14)
MAX_WINDOWS_PER_REQUEST = 100
# Windows not yet over, per doctor: a year of two sessions a day, with room to spare; anyone can register as a
# doctor, so what one doctor can store is bounded.
MAX_UPCOMING_WINDOWS = 1000
# Items in one answer of a schedule read (slots, windows); more come by following its `Link: rel="next"`.
DEFAULT_PAGE = 500
MAX_PAGE = 1000


class Interval(msgspec.Struct):
    start_time: datetime
    end_time: datetime


class Slot(msgspec.Struct):
    start_time: datetime
    end_time: datetime
    availability_id: int


def check_window(
    start_time: datetime, end_time: datetime, field_prefix: str, now: datetime
) -> tuple[datetime, datetime]:
    """A window to publish, as naive UTC: on the 5-minute grid, after now, ending after it starts, at most 24
    hours."""
    start = on_grid(to_db(start_time, field_prefix + "start_time"), field_prefix + "start_time")
    end = on_grid(to_db(end_time, field_prefix + "end_time"), field_prefix + "end_time")
    if end <= start:
        raise InvalidInput("must be after start_time", field=field_prefix + "end_time")
    if start <= now:
        raise InvalidInput("must be in the future", field=field_prefix + "start_time")
    if end - start > MAX_WINDOW:
        raise InvalidInput("a window is at most 24 hours long", field=field_prefix + "end_time")
    return start, end


async def add_windows(tx: Connection, doctor_id: int, windows: list[tuple[datetime, datetime]],
                      now: datetime) -> list[Row]:
    """Publish checked windows, all or none, under the doctor's row lock; 409 if one overlaps another or the
    doctor would have more than MAX_UPCOMING_WINDOWS."""
    for i, (start, end) in enumerate(windows):
        for other_start, other_end in windows[:i]:
            if overlaps(start, end, other_start, other_end):
                raise Conflict("two of the windows sent overlap each other")
    # Same row lock as booking: a window cannot change while a booking into it is being decided.
    await tx.fetch_one("lock_doctor", {"doctor_id": doctor_id})
    upcoming = await tx.fetch_value("count_upcoming_windows", {"doctor_id": doctor_id, "now": now})
    if upcoming + len(windows) > MAX_UPCOMING_WINDOWS:
        raise Conflict(f"a doctor has at most {MAX_UPCOMING_WINDOWS} upcoming windows; you have {upcoming}",
                       upcoming_windows=upcoming, limit=MAX_UPCOMING_WINDOWS)
    created = []
    for start, end in windows:
        params = {"doctor_id": doctor_id, "start_time": start, "end_time": end}
        in_the_way = await tx.fetch_one("find_overlapping_availability", params)
        if in_the_way:
            raise Conflict("the window overlaps one you already published",
                           conflicting_window=msgspec.to_builtins(from_row(Interval, in_the_way)) | {
                               "id": in_the_way["id"]})
        _, window_id = await tx.execute("insert_availability", {**params, "created_at": now})
        created.append({**params, "id": window_id})
    return created


async def delete_window(tx: Connection, doctor_id: int, window_id: int) -> None:
    """Withdraw a window of this doctor's, under the doctor's row lock; 409 if an appointment lies inside."""
    await tx.fetch_one("lock_doctor", {"doctor_id": doctor_id})
    window = await tx.fetch_one("find_availability", {"id": window_id})
    if window is None or window["doctor_id"] != doctor_id:
        raise NotFound("no such availability window of yours")
    if await tx.fetch_one("find_confirmed_appointment_in_window", window):
        raise Conflict("a confirmed appointment lies inside this window; cancel it first")
    await tx.execute("delete_availability", {"id": window_id})


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


async def doctor_time(db: Database, doctor_id: int, range_start: datetime, range_end: datetime) -> DoctorTime:
    """The doctor's windows in the range and the time taken in them, read in one query; 404 for no doctor."""
    rows = await db.fetch_all("list_windows_and_busy_in_range",
                              {"doctor_id": doctor_id, "from": range_start, "to": range_end})
    windows = [(row["start_time"], row["end_time"], row["id"]) for row in rows if row["kind"] == "window"]
    if not windows:
        await find_doctor(db, doctor_id)  # 404 for an unknown doctor, nothing for one with no windows
    return DoctorTime(windows, [(row["start_time"], row["end_time"]) for row in rows if row["kind"] == "busy"])


class Page(msgspec.Struct, Generic[T]):
    """Some items of a schedule read, and where the next page starts (`from` of the next read) if there is one."""

    items: list[T]
    next_from: datetime | None


async def availability(db: Database, doctor_id: int, start: str | None, end: str | None,
                       limit: int = DEFAULT_PAGE) -> Page[Row]:
    """The doctor's windows in the range, each with its free intervals (`free`), at most `limit` of them."""
    range_start, range_end = resolve_range(start, end)
    time = await doctor_time(db, doctor_id, range_start, range_end)
    windows = time.windows[:limit + 1]
    items = [{"id": window_id, "doctor_id": doctor_id, "start_time": window_start, "end_time": window_end,
              "free": [Interval(s.replace(tzinfo=UTC), e.replace(tzinfo=UTC))
                       for s, e in time.free_in(window_start, window_end)]}
             for window_start, window_end, window_id in windows[:limit]]
    return Page(items, windows[limit][0].replace(tzinfo=UTC) if len(windows) > limit else None)


async def slots(db: Database, doctor_id: int, start: str | None, end: str | None, duration_minutes: int,
                limit: int = DEFAULT_PAGE) -> Page[Slot]:
    """The doctor's bookable slots of `duration_minutes` in the range (none in the past), at most `limit`."""
    range_start, range_end = resolve_range(start, end)
    time = await doctor_time(db, doctor_id, range_start, range_end)
    found, next_start = time.slots(timedelta(minutes=duration_minutes), range_start, range_end, utcnow(), limit)
    return Page([Slot(s.replace(tzinfo=UTC), e.replace(tzinfo=UTC), window_id) for s, e, window_id in found],
                next_start.replace(tzinfo=UTC) if next_start else None)
