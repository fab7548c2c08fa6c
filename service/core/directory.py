"""The directory's "first free": each listed doctor's next bookable slot after an instant, for many doctors at once.

A few round trips whatever the number of doctors: every doctor's schedule over a short range first (most have a
slot within a day), then, for those still without one, over longer and longer ranges, each in one query.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from service.core.db import Database, Row
from service.core.doctors import list_doctors
from service.core.errors import InvalidInput
from service.core.schedule import Slot, doctor_time_from_rows, in_zone, read_bounds, rules_of
from service.core.times import utcnow
from service.core.zones import zone_named

DEFAULT_LENGTH = timedelta(minutes=30)  # without a type: the slot length a plain slot read assumes
# Each step reads this much further ahead, for the doctors still without a slot: 62 days in all.
STEPS = (timedelta(days=1), timedelta(days=6), timedelta(days=24), timedelta(days=31))
MAX_SORTED = 5000  # doctors ranked by first free slot in one request; narrow the search past that


async def next_free_slots(db: Database, doctors: list[Row], after: datetime,
                          type_name: str | None) -> dict[int, Slot | None]:
    """Each doctor's first bookable slot starting at or after `after` (within 62 days), or None; of their active
    type named `type_name` (its length and rules) if given, else of 30 minutes."""
    now = utcnow()
    found: dict[int, Slot | None] = {doctor["id"]: None for doctor in doctors}
    if not doctors:
        return found
    zones = {doctor["id"]: zone_named(doctor["timezone"]) for doctor in doctors}
    types: dict[int, Row] = {}
    if type_name is not None:
        for row in await db.fetch_all("list_active_types_named", {"doctor_ids": tuple(found), "type_name": type_name}):
            types.setdefault(row["doctor_id"], row)
    pending = set(found) if type_name is None else set(types)
    start = max(after, now)
    for step in STEPS:
        if not pending:
            break
        end = start + step
        rows_of: dict[int, list[Row]] = defaultdict(list)
        for row in await db.fetch_all("list_schedules_of_doctors",
                                      {"doctor_ids": tuple(sorted(pending)), **read_bounds(start, end)}):
            rows_of[row["doctor_id"]].append(row)
        for doctor_id in list(pending):
            appointment_type = types.get(doctor_id)
            length = timedelta(minutes=appointment_type["duration_minutes"]) if appointment_type else DEFAULT_LENGTH
            time = doctor_time_from_rows(rows_of[doctor_id], zones[doctor_id], [(start, end)])
            first, _ = time.slots(length, start, end, now, 1, rules_of(appointment_type))
            if first:
                slot_start, slot_end, interval = first[0]
                zone = zones[doctor_id]
                found[doctor_id] = Slot(slot_start.replace(tzinfo=UTC), slot_end.replace(tzinfo=UTC),
                                        in_zone(slot_start, zone), in_zone(slot_end, zone), interval.window_id)
                pending.discard(doctor_id)
        start = end
    return found


async def search(db: Database, name_part: str | None, specialty: str | None, type_name: str | None,
                 after: datetime | None, sort_by_next_free: bool, limit: int,
                 offset: int) -> tuple[list[tuple[Row, Slot | None]], int]:
    """A page of the directory with each doctor's next free slot after `after` (now by default), by name or by
    that slot (soonest first, doctors with none last)."""
    after = after or utcnow()
    if not sort_by_next_free:
        rows, total = await list_doctors(db, name_part, specialty, limit, offset, type_name)
        slots = await next_free_slots(db, rows, after, type_name)
        return [(row, slots[row["id"]]) for row in rows], total
    rows, total = await list_doctors(db, name_part, specialty, MAX_SORTED + 1, 0, type_name)
    if total > MAX_SORTED:
        raise InvalidInput(f"{total} doctors match: narrow the search (specialty, q, appointment_type_name) to at "
                           f"most {MAX_SORTED} to sort them by next free slot", field="sort")
    slots = await next_free_slots(db, rows, after, type_name)

    def soonest_first(row: Row) -> tuple[bool, datetime, str, int]:
        slot = slots[row["id"]]
        return slot is None, slot.start_time if slot else after.replace(tzinfo=UTC), row["name"], row["id"]

    ranked = sorted(rows, key=soonest_first)
    return [(row, slots[row["id"]]) for row in ranked[offset:offset + limit]], total
