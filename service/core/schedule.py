"""A doctor's schedule: availability windows, their free intervals, and the bookable slots in a range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from service.core.db import Connection, Database, Row
from service.core.doctors import find_doctor
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.times import from_row, overlaps, time_range, to_db, utcnow

MAX_WINDOW = timedelta(hours=24)
MAX_RANGE = timedelta(days=62)
DEFAULT_RANGE = timedelta(days=14)
MAX_WINDOWS_PER_REQUEST = 100


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
    """A window to publish, as naive UTC: after now, ending after it starts, at most 24 hours."""
    start = to_db(start_time, field_prefix + "start_time")
    end = to_db(end_time, field_prefix + "end_time")
    if end <= start:
        raise InvalidInput("must be after start_time", field=field_prefix + "end_time")
    if start <= now:
        raise InvalidInput("must be in the future", field=field_prefix + "start_time")
    if end - start > MAX_WINDOW:
        raise InvalidInput("a window is at most 24 hours long", field=field_prefix + "end_time")
    return start, end


async def add_windows(tx: Connection, doctor_id: int, windows: list[tuple[datetime, datetime]],
                      now: datetime) -> list[Row]:
    """Publish checked windows, all or none, under the doctor's row lock; 409 if one overlaps another."""
    for i, (start, end) in enumerate(windows):
        for other_start, other_end in windows[:i]:
            if overlaps(start, end, other_start, other_end):
                raise Conflict("two of the windows sent overlap each other")
    # Same row lock as booking: a window cannot change while a booking into it is being decided.
    await tx.fetch_one("lock_doctor", {"doctor_id": doctor_id})
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


async def windows_and_busy(
    db: Database, doctor_id: int, range_start: datetime, range_end: datetime
) -> tuple[list[Row], list[tuple[datetime, datetime]]]:
    """The doctor's windows in the range and the confirmed appointments among them, in one query."""
    rows = await db.fetch_all("list_windows_and_busy_in_range",
                              {"doctor_id": doctor_id, "from": range_start, "to": range_end})
    windows = [row for row in rows if row["kind"] == "window"]
    if not windows:
        await find_doctor(db, doctor_id)  # 404 for an unknown doctor, [] for one with no windows
    busy = [(row["start_time"], row["end_time"]) for row in rows if row["kind"] == "busy"]
    return windows, busy


def free_intervals(window: Row, busy: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
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
    windows: list[Row], busy: list[tuple[datetime, datetime]], step: timedelta, earliest: datetime,
    latest: datetime,
) -> list[Slot]:
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
                        slots.append(Slot(start_time=start, end_time=end, availability_id=window["id"]))
                    start, end = end, end + step
            except OverflowError:  # the next slot would end after 9999-12-31: there is none
                pass
    return slots


async def availability(db: Database, doctor_id: int, start: str | None, end: str | None) -> list[Row]:
    """The doctor's windows in the range, each with its free intervals (`free`)."""
    range_start, range_end = resolve_range(start, end)
    windows, busy = await windows_and_busy(db, doctor_id, range_start, range_end)
    return [{**w, "free": [Interval(s.replace(tzinfo=UTC), e.replace(tzinfo=UTC))
                           for s, e in free_intervals(w, busy)]} for w in windows]


async def slots(db: Database, doctor_id: int, start: str | None, end: str | None, duration_minutes: int) -> list[Slot]:
    """The doctor's bookable slots of `duration_minutes` in the range, none in the past."""
    range_start, range_end = resolve_range(start, end)
    windows, busy = await windows_and_busy(db, doctor_id, range_start, range_end)
    return bookable_slots(windows, busy, timedelta(minutes=duration_minutes), max(range_start, utcnow()), range_end)
