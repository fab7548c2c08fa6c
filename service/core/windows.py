"""One-off availability windows: published and withdrawn under the doctor's row lock."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from service.core.db import Connection, Row
from service.core.doctors import lock_doctor
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.schedule import Interval
from service.core.times import from_row, grid_span, overlaps

MAX_WINDOW = timedelta(hours=24)
MAX_WINDOWS_PER_REQUEST = 100
# Windows not yet over, per doctor: a year of two sessions a day, with room to spare; anyone can register as a
# doctor, so what one doctor can store is bounded.
MAX_UPCOMING_WINDOWS = 1000


def check_window(
    start_time: datetime, end_time: datetime, field_prefix: str, now: datetime
) -> tuple[datetime, datetime]:
    """A window to publish, as naive UTC: on the 5-minute grid, after now, ending after it starts, at most 24
    hours."""
    start, end = grid_span(start_time, end_time, field_prefix)
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
    await lock_doctor(tx, doctor_id)
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
    await lock_doctor(tx, doctor_id)
    window = await tx.fetch_one("find_availability", {"id": window_id})
    if window is None or window["doctor_id"] != doctor_id:
        raise NotFound("no such availability window of yours")
    if await tx.fetch_one("find_held_appointment_in_window", window):
        raise Conflict("a confirmed appointment lies inside this window; cancel it first")
    await tx.execute("delete_availability", {"id": window_id})
