"""Reminders before an appointment (REMINDER_OFFSETS_MINUTES), made by the worker's sweep as outbox events.

Each is made once per appointment and offset (a unique key), in the transaction of its event, and only
- for an appointment still going ahead (status in outbox.ACTIVE_STATUSES) whose start has not passed,
- if it came due after the booking (booked 3 hours ahead: no 24-hour reminder),
- if no later reminder was made: after a worker outage spanning two due times, only the later one is sent, late.
The email is sent only if the appointment is still going ahead then too (`going_ahead`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from service.core.db import ER_DUP_ENTRY, Database, mysql_error_code
from service.core.outbox import ACTIVE_STATUSES, REMINDER, appointment_event, record_events
from service.core.times import utcnow

log = logging.getLogger("service.reminders")
BATCH = 500


async def make_due_reminders(db: Database, offsets: list[int], now: datetime | None = None) -> int:
    """Make the reminders that have come due (offsets in seconds); how many were made."""
    now = now or utcnow()
    made = 0
    for offset in sorted(offsets):  # the smallest first: a later reminder made supersedes an earlier one still due
        due = await db.fetch_all("list_due_reminders", {"now": now, "offset": offset, "active": ACTIVE_STATUSES,
                                                        "limit": BATCH})
        if not due:
            continue
        try:
            async with db.transaction() as tx:
                await record_events(tx, [appointment_event(REMINDER, a, offset_minutes=offset / 60) for a in due],
                                    now=now)
                await tx.execute_many("insert_reminders", [
                    {"appointment_id": a["id"], "offset": offset, "now": now} for a in due])
        except Exception as exc:
            if mysql_error_code(exc) != ER_DUP_ENTRY:
                raise
            log.info("reminders made by another sweep meanwhile; this batch is left to the next")  # rolled back
            continue
        made += len(due)
    return made


async def going_ahead(db: Database, appointment_ids: set[int]) -> set[int]:
    """Those of these appointments whose reminders should still be sent: active, and not yet started."""
    if not appointment_ids:
        return set()
    rows = await db.fetch_all("list_active_appointments", {
        "ids": tuple(appointment_ids), "active": ACTIVE_STATUSES, "now": utcnow()})
    return {row["id"] for row in rows}
