"""The doctors' directory and profiles."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from service.core.accounts import CurrentUser
from service.core.db import Connection, Database, Row
from service.core.errors import NotFound
from service.core.staff import check_schedule_access

# schedule_changes.action (migration 0010)
ScheduleAction = Literal["weekly_hours_replaced", "time_off_added", "time_off_withdrawn", "appointment_type_created",
                         "appointment_type_changed", "appointment_type_deactivated"]


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_doctors(db: Database, name_part: str | None, specialty: str | None, limit: int, offset: int,
                       type_name: str | None = None) -> tuple[list[Row], int]:
    """A page of doctors by name, and how many match in all."""
    filters = {"name_like": like_pattern(name_part) if name_part else None, "specialty": specialty,
               "type_name": type_name}
    async with db.connection() as conn:
        rows = await conn.fetch_all("list_doctors", {**filters, "limit": limit, "offset": offset})
        total = await conn.fetch_value("count_doctors", filters)
    return rows, total


async def find_doctor(db: Database | Connection, doctor_id: int) -> Row:
    doctor = await db.fetch_one("find_doctor", {"id": doctor_id})
    if doctor is None:
        raise NotFound(f"no doctor with id {doctor_id}")
    return doctor


async def update_specialty(tx: Connection, doctor_id: int, specialty: str | None) -> None:
    specialty = specialty.strip() if specialty else None
    await tx.execute("update_doctor_specialty", {"id": doctor_id, "specialty": specialty})


async def lock_doctor(tx: Connection, doctor_id: int) -> bool:
    """The doctor's row lock: every writer of a doctor's schedule (windows, hours, time off, types, bookings,
    cancellations) takes it first, so a booking is decided against a schedule no one is changing. False if there
    is no such doctor."""
    return await tx.fetch_one("lock_doctor", {"doctor_id": doctor_id}) is not None


async def lock_schedule(tx: Connection, actor: CurrentUser, doctor_id: int) -> None:
    """Before a change to a doctor's weekly hours, time off or appointment types: 403 unless the actor may make it
    (the doctor, or staff), then the doctor's row lock; 404 if there is no such doctor."""
    check_schedule_access(actor, doctor_id)
    if not await lock_doctor(tx, doctor_id):
        raise NotFound(f"no doctor with id {doctor_id}")


async def record_schedule_change(tx: Connection, actor: CurrentUser, doctor_id: int, action: ScheduleAction,
                                 subject_id: int | None, now: datetime) -> None:
    """Who changed the doctor's schedule, and how: appended in the change's transaction, under the lock."""
    await tx.execute("insert_schedule_change", {"doctor_id": doctor_id, "actor_id": actor.id, "action": action,
                                                "subject_id": subject_id, "now": now})
