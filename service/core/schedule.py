"""Reading a doctor's schedule: the available intervals in a range, their free parts, the bookable slots, and the
next available time from now. The rules themselves live in availability.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from service.core.availability import (
    NO_RULES,
    ZERO,
    Available,
    DoctorTime,
    Rules,
    WeeklyInterval,
    available_intervals,
    hold_key,
)
from service.core.availability import weekly_spans as expand_weekly
from service.core.db import Database, Row
from service.core.errors import InvalidInput, NotFound
from service.core.times import time_range, utcnow
from service.core.zones import zone_named

T = TypeVar("T")

MAX_RANGE = timedelta(days=62)
DEFAULT_RANGE = timedelta(days=14)
# How far "the next available time" is looked for, from now (the longest horizon an appointment type may have).
MAX_LOOKAHEAD = timedelta(days=730)
# Items in one answer of a schedule read (slots, windows); more come by following its `Link: rel="next"`.
DEFAULT_PAGE = 500
DEFAULT_NEXT_AVAILABLE = 20
MAX_PAGE = 1000


class Interval(msgspec.Struct):
    start_time: datetime
    end_time: datetime


class Slot(msgspec.Struct):
    start_time: datetime
    end_time: datetime
    local_start_time: datetime
    local_end_time: datetime
    availability_id: int | None


class Page(msgspec.Struct, Generic[T]):
    """Some items of a schedule read, and where the next page starts (`from` of the next read) if there is one."""

    items: list[T]
    next_from: datetime | None


def rules_of(appointment_type: Row | None) -> Rules:
    """The booking rules of an appointment type (none without one: any start in the future)."""
    if appointment_type is None:
        return NO_RULES
    return Rules(buffer_before=timedelta(minutes=appointment_type["buffer_before_minutes"]),
                 buffer_after=timedelta(minutes=appointment_type["buffer_after_minutes"]),
                 min_notice=timedelta(minutes=appointment_type["min_notice_minutes"]),
                 max_ahead=timedelta(days=appointment_type["max_days_ahead"]))


_BUFFERS = [timedelta(minutes=minutes) for minutes in range(241)]  # 0-240: every buffer a type may have


def blocked_span(row: Row) -> tuple[datetime, datetime]:
    """An appointment's blocked span: itself and the buffers it was booked with (row `a`, `b`: their minutes).
    The hottest line of a full schedule's read, hence the table of timedeltas."""
    before, after = row["a"], row["b"]
    if not before and not after:
        return row["start_time"], row["end_time"]
    return row["start_time"] - _BUFFERS[before], row["end_time"] + _BUFFERS[after]


def doctor_time_from_rows(rows: Iterable[Row], zone: ZoneInfo, ranges: Iterable[tuple[datetime, datetime]],
                          moving_ids: set[int] | frozenset[int] = frozenset()) -> DoctorTime:
    """A DoctorTime from the rows of list_schedule_in_range / list_schedules_between (kinds hours, window, off,
    busy, held), with the weekly hours laid out over each range read. Appointments a batch may move and holds it
    may confirm (`moving_ids`: appointment ids and hold_key()s) are kept apart (availability.Taken)."""
    hours, windows, time_off, blocked = [], set(), [], []
    moving = {}
    for row in rows:
        kind = row["kind"]
        if kind == "hours":
            hours.append(WeeklyInterval(row["a"], row["b"], row["c"]))
        elif kind == "window":
            windows.add((row["start_time"], row["end_time"], row["id"]))
        elif kind == "off":
            time_off.append((row["start_time"], row["end_time"]))
        elif kind == "busy" or kind == "held":  # an appointment holding its time, or a live hold
            key = row["id"] if kind == "busy" else hold_key(row["id"])
            if key in moving_ids:
                moving[key] = blocked_span(row)
            else:
                blocked.append(blocked_span(row))
    weekly = {span for start, end in ranges for span in expand_weekly(hours, zone, start, end)}
    return DoctorTime(available_intervals(weekly, windows, time_off), blocked, moving)


def read_bounds(start: datetime, end: datetime, now: datetime | None = None) -> dict[str, datetime]:
    """range_bounds, and `now`, which tells a live hold from an expired one (a decision passes its own)."""
    return {**range_bounds(start, end), "now": now or utcnow()}


def range_bounds(start: datetime, end: datetime) -> dict[str, datetime]:
    """[from, to) and the margins the schedule queries scan around it, clamped to the years 1-9999 (MySQL's own
    date arithmetic past them gives NULL, which would silently match nothing)."""
    def shifted(moment: datetime, delta: timedelta) -> datetime:
        try:
            return moment + delta
        except OverflowError:
            return datetime.max if delta > ZERO else datetime.min
    return {"from": start, "to": end, "day_before": shifted(start, -timedelta(days=1)),
            "day_after": shifted(end, timedelta(days=1)), "year_before": shifted(start, -timedelta(days=366))}


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


async def doctor_time(db: Database, doctor_id: int, range_start: datetime,
                      range_end: datetime) -> tuple[DoctorTime, ZoneInfo]:
    """The doctor's schedule over the range, read in one query, and the doctor's zone; 404 for no doctor."""
    rows = await db.fetch_all("list_schedule_in_range", {"doctor_id": doctor_id,
                                                         **read_bounds(range_start, range_end)})
    doctor = next((row for row in rows if row["kind"] == "doctor"), None)
    if doctor is None:
        raise NotFound(f"no doctor with id {doctor_id}")
    zone = zone_named(doctor["label"])
    return doctor_time_from_rows(rows, zone, [(range_start, range_end)]), zone


class BookableTypes:
    """Each API process's copy of the appointment types that bookings name, so storing a booking needs no read of its
    type. Entries hold while the listing's version does (`listing_version`: the API's ScheduleVersions.listing, which
    every change of a type bumps, at once in this process, by pub/sub a moment later in the others; a booking's
    decision does not) and for `ttl` seconds at most; at most `size` are kept.

    A type changed a moment ago in another process is read as it stood, as if the booking had come a moment
    earlier: its request keeps the length it was stored with either way, and the worker's decision checks, under the
    doctor's lock, that the type is still active, with its rules as they are then.
    """

    def __init__(self, listing_version: Callable[[], str], ttl: float = 30.0, size: int = 10_000) -> None:
        self.listing_version = listing_version
        self.ttl = ttl
        self.size = size
        self._rows: dict[int, tuple[str, float, Row]] = {}

    async def find(self, db: Database, type_id: int) -> Row | None:
        """The type with this id (any doctor's, active or not), or None."""
        version = self.listing_version()  # as it was before the read: a change meanwhile leaves the entry behind
        cached = self._rows.get(type_id)
        if cached is not None and cached[0] == version and cached[1] > time.monotonic():
            return cached[2]
        found = await db.fetch_one("find_appointment_type", {"id": type_id})
        self._rows.pop(type_id, None)
        if found is not None:
            if len(self._rows) >= self.size:  # the oldest entry goes
                del self._rows[next(iter(self._rows))]
            self._rows[type_id] = (version, time.monotonic() + self.ttl, found)
        return found


async def bookable_type(db: Database, doctor_id: int, type_id: int, field: str = "appointment_type_id",
                        types: BookableTypes | None = None) -> Row:
    """One of the doctor's active appointment types (from `types` while it holds it); 404 naming `field`
    otherwise."""
    found = await (types.find(db, type_id) if types is not None else db.fetch_one("find_appointment_type",
                                                                                 {"id": type_id}))
    if found is None or found["doctor_id"] != doctor_id or not found["active"]:
        raise NotFound(f"doctor {doctor_id} has no active appointment type {type_id}",
                       errors=[{"field": field, "message": "no such active type of this doctor"}])
    return found


def in_zone(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=UTC).astimezone(zone)


async def slots(db: Database, doctor_id: int, start: str | None, end: str | None, duration_minutes: int,
                type_id: int | None = None, limit: int = DEFAULT_PAGE) -> tuple[Page[Slot], int]:
    """The doctor's bookable slots in the range, of an appointment type's length and rules or of
    `duration_minutes` without one: at most `limit`, and the slots' length in minutes."""
    range_start, range_end = resolve_range(start, end)
    appointment_type = await bookable_type(db, doctor_id, type_id) if type_id is not None else None
    if appointment_type is not None:
        duration_minutes = appointment_type["duration_minutes"]
    time, zone = await doctor_time(db, doctor_id, range_start, range_end)
    found, next_start = time.slots(timedelta(minutes=duration_minutes), range_start, range_end, utcnow(), limit,
                                   rules_of(appointment_type))
    items = [Slot(s.replace(tzinfo=UTC), e.replace(tzinfo=UTC), in_zone(s, zone), in_zone(e, zone), a.window_id)
             for s, e, a in found]
    return Page(items, next_start.replace(tzinfo=UTC) if next_start else None), duration_minutes


def interval_row(doctor_id: int, interval: Available, free: list[tuple[datetime, datetime]], zone: ZoneInfo) -> Row:
    return {"id": interval.window_id, "doctor_id": doctor_id, "start_time": interval.start,
            "end_time": interval.end, "local_start_time": in_zone(interval.start, zone),
            "local_end_time": in_zone(interval.end, zone),
            "free": [Interval(s.replace(tzinfo=UTC), e.replace(tzinfo=UTC)) for s, e in free]}


async def availability(db: Database, doctor_id: int, start: str | None, end: str | None,
                       limit: int | None = None) -> Page[Row]:
    """The doctor's available intervals in the range, each with its free parts, at most `limit` of them.

    Without a range: the next intervals with free time from now, however far ahead the first one is (up to
    MAX_LOOKAHEAD), at most `limit` (DEFAULT_NEXT_AVAILABLE) of them.
    """
    if start is None and end is None:
        return await next_available(db, doctor_id, limit or DEFAULT_NEXT_AVAILABLE)
    limit = limit or DEFAULT_PAGE
    range_start, range_end = resolve_range(start, end)
    time, zone = await doctor_time(db, doctor_id, range_start, range_end)
    intervals = [a for a in time.available if a.end > range_start and a.start < range_end][:limit + 1]
    items = [interval_row(doctor_id, a, time.taken.free_in(a.start, a.end), zone) for a in intervals[:limit]]
    return Page(items, intervals[limit].start.replace(tzinfo=UTC) if len(intervals) > limit else None)


async def next_available(db: Database, doctor_id: int, limit: int) -> Page[Row]:
    """From now on, read 62 days at a time, the available intervals that still have free time."""
    now = utcnow()
    items: list[Row] = []
    chunk_start = now
    while chunk_start < now + MAX_LOOKAHEAD:
        chunk_end = chunk_start + MAX_RANGE
        time, zone = await doctor_time(db, doctor_id, chunk_start, chunk_end)
        for interval in time.available:
            if not chunk_start <= interval.start < chunk_end and not (interval.start < now < interval.end):
                continue  # an interval straddling two chunks is listed once, by the chunk it starts in
            free = [(s, e) for s, e in time.taken.free_in(interval.start, interval.end) if e > now]
            if free:
                if len(items) == limit:
                    return Page(items, interval.start.replace(tzinfo=UTC))
                items.append(interval_row(doctor_id, interval, free, zone))
        chunk_start = chunk_end
    return Page(items, None)
