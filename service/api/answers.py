"""How the queue-backed operations answer (bookings, reschedules, holds and their confirmations): 202 with the
status URL, or with `Prefer: wait=N` the decision itself (201 with what was made, 409 with the reason)."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Response
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from redis.asyncio import Redis

from service.api.notifications import Notifications
from service.api.schemas import appointment_out, hold_out, request_out
from service.core import appointments, holds
from service.core.accounts import CurrentUser
from service.core.appointments import status_url
from service.core.db import Database, Row
from service.core.errors import Conflict
from service.core.queue import enqueue_booking

MAX_PREFER_WAIT = 10
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
# Printable ASCII, as the IETF draft's Idempotency-Key: beyond ASCII a header carries bytes whose meaning depends on
# the sender's encoding (`caf\xe9` and `caf\xc3\xa9` are both café). Stored and compared byte for byte (migration 0008).
IDEMPOTENCY_KEY = r"^[ -~]+$"

IdempotencyKey = Annotated[str | None, HeaderParameter(
    name="Idempotency-Key", min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY,
    description="Printable ASCII, compared byte for byte")]
Prefer = Annotated[str | None, HeaderParameter(name="Prefer", max_length=200)]


class BookingAccepted(msgspec.Struct):
    example: ClassVar[dict[str, Any]] = {"request_id": 104, "status": "pending", "status_url": "/booking-requests/104"}

    request_id: int
    status: str
    status_url: str


def prefer_wait(prefer: str | None) -> int:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; 0 when absent or malformed."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), MAX_PREFER_WAIT) if match else 0


async def accepted(
    db: Database, redis: Redis, listener: Notifications, user: CurrentUser, doctor_id: int, request_id: int,
    stored: Row | None, prefer: str | None,
) -> Response[Any]:
    """The answer to a stored request (asked by its patient, or by staff for them): queue it, and say where it
    stands (202), or with `Prefer: wait` its decision (201/409) if it comes in time."""
    read = partial(appointments.read_own_request, db, request_id, user.id)
    if stored is not None:
        listener.remember(stored)  # before the job is queued: see Notifications.remember
        status = "pending"
    else:  # a replayed Idempotency-Key: say where the first request stands
        status = (await read())["status"]
    if status == "pending":
        await enqueue_booking(redis, request_id, doctor_id)
    headers = {"Location": status_url(request_id)}
    if wait := prefer_wait(prefer):
        row = await listener.wait_for_decision(request_id, user.id, read, wait)
        decided = await decided_response(db, row, user)
        if decided is not None:
            return decided
        headers["Preference-Applied"] = f"wait={wait}"
    return Response(
        BookingAccepted(request_id=request_id, status=status, status_url=status_url(request_id)),
        status_code=HTTP_202_ACCEPTED, headers=headers,
    )


async def decided_response(db: Database, row: Row, user: CurrentUser) -> Response | None:
    """For `Prefer: wait`: 201 with the appointment (or the hold), 409 with the reason, or None while still
    pending."""
    if row["status"] == "confirmed" and row["kind"] == "hold":
        hold = await holds.find_hold(db, row["hold_id"], user)
        return Response(hold_out(hold), status_code=HTTP_201_CREATED, headers={"Location": f"/holds/{hold['id']}"})
    if row["status"] == "confirmed":
        appointment = await appointments.booked_appointment(db, row)
        return Response(appointment_out(appointment), status_code=HTTP_201_CREATED,
                        headers={"Location": f"/appointments/{appointment['id']}"})
    if row["status"] in ("rejected", "failed"):
        raise Conflict(f"the booking was {row['status']}: {row['reason']}", reason=row["reason"],
                       request_id=row["id"], status_url=status_url(row["id"]),
                       booking_request=msgspec.to_builtins(request_out(row)))
    return None
