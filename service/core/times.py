"""Time conventions: RFC 3339 at the edges, naive UTC in MySQL, half-open intervals everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from service.core.errors import InvalidInput

T = TypeVar("T")

# Every window and appointment starts and ends on this grid, so each is at least this long: a schedule cannot be
# cut into slivers (a 1 µs window, a 1 µs booking) that make every read of it slow.
GRID_MINUTES = 5
GRID = timedelta(minutes=GRID_MINUTES)


def utcnow() -> datetime:
    """Now, as the naive UTC value MySQL stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def rfc3339(moment: datetime) -> str:
    """A stored (naive UTC) instant as RFC 3339 text, for the places msgspec does not write it (problem extras)."""
    return moment.isoformat() + "Z"


def to_db(value: datetime, field: str) -> datetime:
    """An input time as naive UTC; a time without an offset is read as UTC."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):
        raise InvalidInput("time is out of the supported range", field=field) from None


def on_grid(value: datetime, field: str) -> datetime:
    """`value` (naive UTC) if it lies on the 5-minute grid: whole minutes, a multiple of five."""
    if value.microsecond or value.second or value.minute % GRID_MINUTES:
        raise InvalidInput(f"must be on a {GRID_MINUTES}-minute boundary (e.g. 09:05:00, not 09:07)", field=field)
    return value


def grid_span(start_time: datetime, end_time: datetime, field_prefix: str = "") -> tuple[datetime, datetime]:
    """An input [start_time, end_time) as naive UTC on the 5-minute grid, ending after it starts; a 400 naming the
    field otherwise. (Windows, bookings and time off each add their own rules: how long, and in the future.)"""
    start = on_grid(to_db(start_time, field_prefix + "start_time"), field_prefix + "start_time")
    end = on_grid(to_db(end_time, field_prefix + "end_time"), field_prefix + "end_time")
    if end <= start:
        raise InvalidInput("must be after start_time", field=field_prefix + "end_time")
    return start, end


def parse_time(value: str, field: str) -> datetime:
    """A time sent as text (a query parameter) in RFC 3339, and nothing else: no epoch seconds like `0.5`."""
    try:
        return msgspec.convert(value, datetime)  # strict: the same RFC 3339 parser as JSON bodies
    except msgspec.ValidationError:
        raise InvalidInput("must be an RFC 3339 time, e.g. 2030-01-15T09:00:00Z", field=field) from None


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """An optional [from, to) filter sent as text, as naive UTC, refusing an empty or inverted range."""
    start_db = None if start is None else to_db(parse_time(start, "from"), "from")
    end_db = None if end is None else to_db(parse_time(end, "to"), "to")
    if start_db and end_db and end_db <= start_db:
        raise InvalidInput("must be after from", field="to")
    return start_db, end_db


def overlaps(start_a: datetime, end_a: datetime, start_b: datetime, end_b: datetime) -> bool:
    """Half-open intervals [start, end): touching ends do not overlap."""
    return start_a < end_b and start_b < end_a


def from_row(cls: type[T], row: dict[str, Any]) -> T:
    """A struct from a DB row, marking the row's naive UTC datetimes as UTC."""
    values = {key: value.replace(tzinfo=UTC) if isinstance(value, datetime) else value for key, value in row.items()}
    return msgspec.convert(values, cls, from_attributes=False, strict=False)
