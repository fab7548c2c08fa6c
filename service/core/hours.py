"""A doctor's time zone, weekly hours and time off: written under the doctor's row lock, like bookings."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from service.core import history
from service.core.accounts import CurrentUser
from service.core.db import Connection, Database, Row
from service.core.doctors import find_doctor, lock_doctor, lock_schedule, record_schedule_change
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.staff import check_schedule_access
from service.core.times import GRID_MINUTES, grid_span, rfc3339, utcnow
from service.core.zones import check_timezone

MAX_WEEKLY_INTERVALS = 100  # 14 a day, with room to spare
MAX_TIME_OFF = timedelta(days=366)
MAX_UPCOMING_TIME_OFF = 500
# ASCII digits only: `\d` also matches other scripts' digits, which int() reads too ("0٩:00" was 09:00).
WALL_CLOCK = re.compile(r"(?:([01][0-9]|2[0-3]):([0-5][0-9])|(24):(00))")


async def set_timezone(tx: Connection, doctor_id: int, timezone: str) -> None:
    await lock_doctor(tx, doctor_id)
    await tx.execute("update_doctor_timezone", {"id": doctor_id, "timezone": check_timezone(timezone)})


def minutes_of(text: str, field: str, *, is_end: bool) -> int:
    """`HH:MM` on the 5-minute grid as minutes after midnight; `24:00` only as an end."""
    match = WALL_CLOCK.fullmatch(text)
    if match is None or (match.group(3) and not is_end):
        raise InvalidInput("must be a wall-clock time HH:MM, 00:00 to 23:55" + (" or 24:00" if is_end else ""),
                           field=field)
    hours, minutes = (int(match.group(1) or match.group(3)), int(match.group(2) or match.group(4)))
    if minutes % GRID_MINUTES:
        raise InvalidInput(f"must be on a {GRID_MINUTES}-minute boundary (e.g. 09:05, not 09:07)", field=field)
    return hours * 60 + minutes


def check_weekly_hours(hours: list[tuple[int, str, str]]) -> list[tuple[int, int, int]]:
    """(weekday, start, end) as (weekday, start minute, end minute); 400 naming the interval that is wrong."""
    checked = []
    for i, (weekday, start, end) in enumerate(hours):
        start_minute = minutes_of(start, f"hours[{i}].start", is_end=False)
        end_minute = minutes_of(end, f"hours[{i}].end", is_end=True)
        if end_minute <= start_minute:
            raise InvalidInput("must be after start, within the same day", field=f"hours[{i}].end")
        checked.append((weekday, start_minute, end_minute, i))
    checked.sort()
    for (weekday, _, end_minute, _), (next_day, next_start, _, j) in zip(checked, checked[1:], strict=False):
        if weekday == next_day and next_start < end_minute:
            raise InvalidInput("overlaps another interval of the same day", field=f"hours[{j}]")
    return [(weekday, start_minute, end_minute) for weekday, start_minute, end_minute, _ in checked]


async def replace_weekly_hours(tx: Connection, doctor_id: int, actor: CurrentUser,
                               hours: list[tuple[int, int, int]]) -> None:
    """The doctor's weekly hours from now on (by the doctor or staff); appointments already confirmed stay."""
    await lock_schedule(tx, actor, doctor_id)
    await tx.execute("delete_weekly_hours", {"doctor_id": doctor_id})
    if hours:
        await tx.execute_many("insert_weekly_hours", [
            {"doctor_id": doctor_id, "weekday": d, "start_minute": s, "end_minute": e} for d, s, e in hours])
    await record_schedule_change(tx, actor, doctor_id, "weekly_hours_replaced", None, utcnow())


def wall_clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


async def weekly_hours(db: Database, doctor_id: int) -> tuple[str, list[Row]]:
    """The doctor's zone and weekly hours, by weekday and start; 404 for no doctor."""
    doctor = await db.fetch_one("find_doctor", {"id": doctor_id})
    if doctor is None:
        raise NotFound(f"no doctor with id {doctor_id}")
    rows = await db.fetch_all("list_weekly_hours", {"doctor_id": doctor_id})
    return doctor["timezone"], [{"weekday": r["weekday"], "start": wall_clock(r["start_minute"]),
                                 "end": wall_clock(r["end_minute"])} for r in rows]


def check_time_off(start_time: datetime, end_time: datetime, now: datetime) -> tuple[datetime, datetime]:
    start, end = grid_span(start_time, end_time)
    if end <= now:
        raise InvalidInput("must be in the future", field="end_time")
    if end - start > MAX_TIME_OFF:
        raise InvalidInput("time off is at most 366 days at a time", field="end_time")
    return start, end


async def add_time_off(tx: Connection, doctor_id: int, actor: CurrentUser, start: datetime, end: datetime,
                       reason: str | None, cancel_appointments: bool) -> tuple[Row, list[Row]]:
    """Time off (by the doctor or staff), under the doctor's lock. Confirmed appointments inside it are a 409
    listing them, unless the caller asked to cancel them (with a reason): then they are cancelled in the same
    transaction. Returns the time off and the appointments it cancelled."""
    if cancel_appointments and not (reason and reason.strip()):
        raise InvalidInput("say why, when the time off cancels appointments", field="reason")
    await lock_schedule(tx, actor, doctor_id)
    # Now is when the lock is ours, as in a booking's decision: a booking confirmed while this waited is cancelled
    # after it was made (cancelled_at, the time off's created_at), not before.
    now = utcnow()
    upcoming = await tx.fetch_value("count_upcoming_time_off", {"doctor_id": doctor_id, "now": now})
    if upcoming >= MAX_UPCOMING_TIME_OFF:
        raise Conflict(f"a doctor has at most {MAX_UPCOMING_TIME_OFF} upcoming periods of time off")
    inside = await tx.fetch_all("list_confirmed_appointments_between",
                                {"doctor_id": doctor_id, "from": max(start, now), "to": end})
    if inside and not cancel_appointments:
        raise Conflict(f"{len(inside)} confirmed appointment(s) lie inside this time off; cancel them first, or "
                       "send cancel_appointments: true with a reason",
                       appointments=[{"id": a["id"], "patient_id": a["patient_id"],
                                      "start_time": rfc3339(a["start_time"]),
                                      "end_time": rfc3339(a["end_time"])} for a in inside])
    reason = reason.strip() if reason else None
    if inside:
        await tx.execute("cancel_appointments_by_doctor", {"ids": tuple(a["id"] for a in inside), "now": now,
                                                           "user_id": actor.id, "reason": reason})
        await history.record(tx, [history.entry("cancelled", now, actor, appointment_id=a["id"],
                                                from_status="confirmed", to_status="cancelled", reason=reason)
                                  for a in inside])
    row = {"doctor_id": doctor_id, "start_time": start, "end_time": end, "reason": reason, "created_by": actor.id,
           "now": now}
    _, time_off_id = await tx.execute("insert_time_off", row)
    await record_schedule_change(tx, actor, doctor_id, "time_off_added", time_off_id, now)
    return {**row, "id": time_off_id, "created_at": now}, inside


async def list_time_off(db: Database, doctor_id: int, actor: CurrentUser, now: datetime, limit: int,
                        offset: int) -> list[Row]:
    """The doctor's time off not yet over, for the doctor or staff (its reasons are no one else's); 404 for no
    doctor."""
    check_schedule_access(actor, doctor_id)
    await find_doctor(db, doctor_id)
    return await db.fetch_all("list_time_off", {"doctor_id": doctor_id, "now": now, "limit": limit,
                                                "offset": offset})


async def delete_time_off(tx: Connection, doctor_id: int, actor: CurrentUser, time_off_id: int) -> None:
    """Withdraw time off (its time is bookable again), by the doctor or staff, under the doctor's lock."""
    await lock_schedule(tx, actor, doctor_id)
    found = await tx.fetch_one("find_time_off", {"id": time_off_id})
    if found is None or found["doctor_id"] != doctor_id:
        raise NotFound(f"no time off {time_off_id} of this doctor")
    await tx.execute("delete_time_off", {"id": time_off_id})
    await record_schedule_change(tx, actor, doctor_id, "time_off_withdrawn", time_off_id, utcnow())
