"""Slot holds: a patient keeps a slot for HOLD_SECONDS while filling in a form, then confirms it or lets it go.

A hold is asked for and confirmed through the booking queue: booking requests of kind `hold` and `confirm_hold`,
decided in the doctor's batch with every rule of a booking (booking.decide), so a slot is never held by two
people, nor held by one and booked by another. While live, a hold blocks its span (buffers included) for every
slot read and decision, exactly as an appointment does. Live means: `held`, and before `expires_at` or with a
confirmation pending that was stored before then (under the doctor's row lock, so a confirmation stored in time
always finds the time kept for it, even if decided a moment after the expiry). An expired hold frees its time with
nobody acting; the waitlist's refill marks it `expired` (waitlist.py).
"""

from __future__ import annotations

from datetime import datetime

from service.core import staff, waitlist
from service.core.accounts import CurrentUser
from service.core.appointments import requested_span, store_span_request
from service.core.db import Connection, Database, Row
from service.core.doctors import lock_doctor
from service.core.errors import Conflict, NotFound
from service.core.schedule import BookableTypes
from service.core.settings import Settings
from service.core.times import rfc3339, utcnow

# Machine-readable reasons of a 409.
HOLD_EXPIRED = "hold_expired"
HOLD_NOT_HELD = "hold_not_held"
TOO_MANY_HOLDS = "too_many_holds"


def shown_status(hold: Row, now: datetime) -> str:
    """A hold's status as the patient sees it: a lapsed one is `expired` before the refill marks it so."""
    if hold["status"] == "held" and hold["expires_at"] <= now and not hold["confirming"]:
        return "expired"
    return hold["status"]


def too_many(limit: int) -> Conflict:
    return Conflict(f"you have {limit} live holds already; confirm or release one first", reason=TOO_MANY_HOLDS,
                    limit=limit)


async def request_hold(
    db: Database, settings: Settings, user: CurrentUser, patient_id: int, doctor_id: int, start_time: datetime,
    end_time: datetime | None, type_id: int | None, notes: str | None, idempotency_key: str | None,
    types: BookableTypes | None = None,
) -> tuple[int, Row | None]:
    """Store a hold request for the patient (asked by them, or by staff for them: staff.booking_patient), decided by
    the worker like a booking: the request id and its row if new. A patient with HOLDS_PER_PATIENT live holds is
    refused here already (and again, exactly, at the decision)."""
    start, end = await requested_span(db, doctor_id, start_time, end_time, type_id, types)
    live = await db.fetch_value("count_live_holds_of_patient", {"patient_id": patient_id, "now": utcnow()})

    def check_limit() -> None:  # a replayed Idempotency-Key answers where its request stands
        if live >= settings.holds_per_patient:
            raise too_many(settings.holds_per_patient)

    return await store_span_request(db, user, patient_id, doctor_id, type_id, start, end, notes, idempotency_key,
                                    "hold", check_new=check_limit)


async def find_hold(db: Database | Connection, hold_id: int, user: CurrentUser) -> Row:
    """The hold if it is the caller's, or the caller is staff (who hold, confirm and release for patients); 404
    otherwise, so others cannot learn that it exists."""
    hold = await db.fetch_one("find_hold_for_patient", {"id": hold_id, "patient_id": user.id,
                                                        "any": staff.sees_every_appointment(user)})
    if hold is None:
        raise NotFound(f"no hold {hold_id} of yours")
    return hold


async def locked_hold(tx: Connection, hold_id: int, user: CurrentUser) -> Row:
    """The caller's hold, read again once its doctor's row is locked: nothing changes it until the commit."""
    hold = await find_hold(tx, hold_id, user)
    await lock_doctor(tx, hold["doctor_id"])
    return await find_hold(tx, hold_id, user)


def check_live(hold: Row, now: datetime) -> None:
    """409 unless the hold still keeps its time: `hold_expired` past its expiry, `hold_not_held` once ended."""
    status = shown_status(hold, now)
    if status == "expired":
        raise Conflict(f"the hold expired at {rfc3339(hold['expires_at'])}; ask for the slot again",
                       reason=HOLD_EXPIRED, expires_at=rfc3339(hold["expires_at"]))
    if status != "held":
        raise Conflict(f"the hold is {status}", reason=HOLD_NOT_HELD, hold_status=status)


async def request_confirm(db: Database, user: CurrentUser, hold_id: int,
                          idempotency_key: str | None) -> tuple[int, Row | None, Row]:
    """Store the confirmation of a live hold (its patient), decided by the worker: the request id, its row if new,
    and the hold. Stored under the doctor's row lock after checking the hold is live, so no decision or expiry can
    come between the check and the stored request; from then on the hold stays live until it is decided."""
    hold = await find_hold(db, hold_id, user)

    async def check_locked(tx: Connection) -> None:
        check_live(await locked_hold(tx, hold_id, user), utcnow())

    request_id, stored = await store_span_request(
        db, user, hold["patient_id"], hold["doctor_id"], hold["appointment_type_id"], hold["start_time"],
        hold["end_time"], hold["notes"], idempotency_key, "confirm_hold", hold_id=hold_id, check_locked=check_locked)
    return request_id, stored, hold


async def release(tx: Connection, hold_id: int, user: CurrentUser) -> tuple[Row, bool]:
    """Let a hold go at once (its patient), under the doctor's row lock: the hold as it now stands, and whether
    this call released it. An offer from the waitlist goes back to the end of the line (waitlist.py). Releasing an
    ended hold changes nothing; a confirmed one is an appointment now (409: cancel that)."""
    hold = await locked_hold(tx, hold_id, user)
    now = utcnow()
    if hold["status"] == "confirmed":
        raise Conflict("the hold was confirmed: cancel its appointment instead", reason=HOLD_NOT_HELD,
                       appointment_id=hold["appointment_id"])
    if hold["status"] != "held":
        return hold, False
    await tx.execute("release_hold", {"id": hold_id, "now": now})
    if hold["waitlist_entry_id"] is not None:
        await waitlist.requeue(tx, [hold], now)
    return await find_hold(tx, hold_id, user), True
