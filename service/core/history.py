"""The appointment history: one row per change of an appointment or booking request, appended in the transaction
of the change, never updated or deleted. A booking request's `requested` row is the exception that keeps a booking to
one statement in the API: it is appended with the request's decision (confirmed, rejected, held or failed), carrying
the time the request was made and who made it; the request itself is its record until then."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from service.core.accounts import CurrentUser
from service.core.db import Database, Row, Writer

Action = Literal["requested", "confirmed", "rejected", "failed", "rescheduled", "status_changed", "cancelled", "held"]
SYSTEM = "system"  # the actor of a worker's decision
MAX_ROWS = 1000


def entry(
    action: Action, at: datetime, actor: CurrentUser | None = None, *, appointment_id: int | None = None,
    request_id: int | None = None, from_status: str | None = None, to_status: str | None = None,
    reason: str | None = None,
) -> Row:
    """One history row; no actor means the system (the worker deciding a request)."""
    return {"appointment_id": appointment_id, "booking_request_id": request_id, "at": at,
            "actor_id": actor.id if actor else None, "actor_role": actor.role if actor else SYSTEM,
            "action": action, "from_status": from_status, "to_status": to_status, "reason": reason}


def requested(request_id: int, at: datetime, actor_id: int, actor_role: str, appointment_id: int | None) -> Row:
    """The `requested` row of a booking request (`appointment_id`: the appointment a reschedule moves)."""
    return {"appointment_id": appointment_id, "booking_request_id": request_id, "at": at, "actor_id": actor_id,
            "actor_role": actor_role, "action": "requested", "from_status": None, "to_status": "pending",
            "reason": None}


async def record(tx: Writer, entries: list[Row]) -> None:
    """Append rows, in the caller's transaction (or its batch of writes): one statement however many."""
    if len(entries) == 1:
        await tx.execute("insert_history", entries[0])
    elif entries:
        await tx.execute_many("insert_history", entries)


async def of_appointment(db: Database, appointment: Row) -> list[Row]:
    """Everything that happened to an appointment and to the request that made it, oldest first."""
    return await db.fetch_all("list_history_of_appointment", {
        "appointment_id": appointment["id"], "booking_request_id": appointment["booking_request_id"],
        "limit": MAX_ROWS})
