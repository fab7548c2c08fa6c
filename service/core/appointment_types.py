"""Appointment types: what a patient can book with a doctor (length, buffers, notice, horizon, and how long before
the start a patient may still cancel)."""

from __future__ import annotations

from service.core.accounts import CurrentUser
from service.core.db import Connection, Database, Row
from service.core.doctors import find_doctor, lock_schedule, record_schedule_change
from service.core.errors import Conflict, InvalidInput, NotFound
from service.core.times import GRID_MINUTES, utcnow

MAX_ACTIVE_TYPES = 50
FIELDS = ("name", "duration_minutes", "buffer_before_minutes", "buffer_after_minutes", "min_notice_minutes",
          "max_days_ahead", "cancel_notice_minutes")
ON_THE_GRID = ("duration_minutes", "buffer_before_minutes", "buffer_after_minutes")


def check_grid(values: dict[str, object]) -> None:
    """Lengths and buffers keep appointments on the 5-minute grid."""
    for field in ON_THE_GRID:
        if field in values and values[field] % GRID_MINUTES:  # type: ignore[operator]
            raise InvalidInput(f"must be a multiple of {GRID_MINUTES} minutes", field=field)


async def create(tx: Connection, doctor_id: int, actor: CurrentUser, values: dict[str, object]) -> Row:
    """A new active type (by the doctor or staff), under the doctor's lock (`values`: FIELDS, in range by the
    caller's schema)."""
    check_grid(values)
    await lock_schedule(tx, actor, doctor_id)
    if await tx.fetch_value("count_active_appointment_types", {"doctor_id": doctor_id}) >= MAX_ACTIVE_TYPES:
        raise Conflict(f"a doctor has at most {MAX_ACTIVE_TYPES} active appointment types")
    row = {"doctor_id": doctor_id, **values, "now": utcnow()}  # stamped once the lock is held
    _, type_id = await tx.execute("insert_appointment_type", row)
    await record_schedule_change(tx, actor, doctor_id, "appointment_type_created", type_id, row["now"])
    return await find_own(tx, doctor_id, type_id)


async def find_own(db: Database | Connection, doctor_id: int, type_id: int) -> Row:
    found = await db.fetch_one("find_appointment_type", {"id": type_id})
    if found is None or found["doctor_id"] != doctor_id:
        raise NotFound(f"no appointment type {type_id} of this doctor")
    return found


async def update(tx: Connection, doctor_id: int, actor: CurrentUser, type_id: int,
                 changes: dict[str, object]) -> Row:
    """Change some fields of an active type (by the doctor or staff), under the doctor's lock: later bookings
    follow the new rules."""
    check_grid(changes)
    await lock_schedule(tx, actor, doctor_id)
    current = await find_own(tx, doctor_id, type_id)
    if not current["active"]:
        raise Conflict("this appointment type was deactivated; create a new one")
    now = utcnow()
    await tx.execute("update_appointment_type", {**{f: current[f] for f in FIELDS}, **changes, "id": type_id,
                                                 "now": now})
    await record_schedule_change(tx, actor, doctor_id, "appointment_type_changed", type_id, now)
    return await find_own(tx, doctor_id, type_id)


async def deactivate(tx: Connection, doctor_id: int, actor: CurrentUser, type_id: int) -> None:
    """No longer bookable (by the doctor or staff); appointments already made keep their type."""
    await lock_schedule(tx, actor, doctor_id)
    await find_own(tx, doctor_id, type_id)
    now = utcnow()
    await tx.execute("deactivate_appointment_type", {"id": type_id, "now": now})
    await record_schedule_change(tx, actor, doctor_id, "appointment_type_deactivated", type_id, now)


async def list_active(db: Database, doctor_id: int) -> list[Row]:
    """A doctor's bookable types; 404 for no doctor."""
    await find_doctor(db, doctor_id)
    return await db.fetch_all("list_active_appointment_types", {"doctor_id": doctor_id})
