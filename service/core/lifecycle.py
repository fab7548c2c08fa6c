"""What happens to an appointment after it is booked: it is moved, the patient checks in, it is completed, the
patient does not come, or it is cancelled. Every change runs under the doctor's row lock and appends its history row
in the same transaction.

Statuses, and the FHIR Appointment.status code each one is (https://hl7.org/fhir/valueset-appointmentstatus.html):

    confirmed    booked
    checked_in   checked-in
    completed    fulfilled
    no_show      noshow
    cancelled    cancelled
    rescheduled  cancelled   (moved: `rescheduled_to` names the appointment that replaced it)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.core import history
from service.core.accounts import CurrentUser
from service.core.appointments import find_appointment, store_request
from service.core.db import Connection, Database, Row
from service.core.doctors import lock_doctor
from service.core.errors import Conflict, Forbidden, InvalidInput
from service.core.settings import Settings
from service.core.times import rfc3339, utcnow

# Where each status may go. `rescheduled` only through a reschedule request (decided by the worker); the rest by
# PATCH /appointments/{id} (and `cancelled` by DELETE too).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "confirmed": ("checked_in", "completed", "no_show", "cancelled", "rescheduled"),
    "checked_in": ("completed",),
    "completed": (),
    "no_show": (),
    "cancelled": (),
    "rescheduled": (),
}
FHIR_STATUS = {"confirmed": "booked", "checked_in": "checked-in", "completed": "fulfilled", "no_show": "noshow",
               "cancelled": "cancelled", "rescheduled": "cancelled"}
CHECK_IN_FROM = timedelta(minutes=60)  # before the start

# Machine-readable reasons of a 409.
TRANSITION_NOT_ALLOWED = "transition_not_allowed"
TOO_LATE_TO_CANCEL = "too_late_to_cancel"
TOO_EARLY = "too_early"


def not_allowed(appointment: Row, to_status: str) -> Conflict:
    current = appointment["status"]
    allowed = [status for status in TRANSITIONS[current] if status != "rescheduled"]
    detail = (f"a {current} appointment cannot become {to_status}; "
              + (f"allowed: {', '.join(allowed)}" if allowed else "it is final"))
    if to_status == "rescheduled" and "rescheduled" in TRANSITIONS[current]:
        detail = "an appointment is moved with POST /appointments/{id}/reschedule"
    return Conflict(detail, reason=TRANSITION_NOT_ALLOWED, current_status=current, allowed=allowed)


def cancellable_until(appointment: Row, settings: Settings) -> datetime:
    """The last moment its patient may cancel or move it: the type's notice, else CANCEL_NOTICE_MINUTES."""
    minutes = appointment["type_cancel_notice_minutes"]
    if minutes is None:
        minutes = settings.cancel_notice_minutes
    return appointment["start_time"] - timedelta(minutes=minutes)


def check_patient_may_change(appointment: Row, user: CurrentUser, settings: Settings, now: datetime) -> None:
    """The cancellation policy: a patient cannot cancel or move an appointment later than its notice before the
    start. Doctors and staff always can."""
    if user.role != "Patient":
        return
    deadline = cancellable_until(appointment, settings)
    if now > deadline:
        raise Conflict(f"too late to cancel or move this appointment: that was possible until {rfc3339(deadline)}",
                       reason=TOO_LATE_TO_CANCEL, cancellable_until=rfc3339(deadline))


async def locked_appointment(tx: Connection, appointment_id: int, user: CurrentUser) -> Row:
    """The appointment (as `find_appointment` lets the user see it), read again once its doctor's row is locked, so
    its status cannot change until the transaction ends."""
    appointment = await find_appointment(tx, appointment_id, user)
    await lock_doctor(tx, appointment["doctor_id"])
    return await find_appointment(tx, appointment_id, user)


async def cancel(tx: Connection, settings: Settings, appointment_id: int, user: CurrentUser,
                 reason: str | None) -> tuple[Row, bool]:
    """Cancel as its patient (within the cancellation policy), or as its doctor or staff with a reason. The
    appointment as it now stands, and whether this call cancelled it (False: it was cancelled already)."""
    appointment = await locked_appointment(tx, appointment_id, user)
    if appointment["status"] == "cancelled":
        return appointment, False
    reason = reason.strip() if reason else None
    if user.role != "Patient" and not reason:
        raise InvalidInput("say why the appointment is cancelled", field="reason")
    if "cancelled" not in TRANSITIONS[appointment["status"]]:
        raise not_allowed(appointment, "cancelled")
    now = utcnow()
    if appointment["start_time"] <= now:
        raise Conflict("the appointment has already started", reason="appointment_started")
    check_patient_may_change(appointment, user, settings, now)
    await tx.execute("cancel_appointment", {"id": appointment_id, "user_id": user.id, "now": now, "reason": reason})
    await history.record(tx, [history.entry("cancelled", now, user, appointment_id=appointment_id,
                                            from_status="confirmed", to_status="cancelled", reason=reason)])
    return await find_appointment(tx, appointment_id, user), True


async def change_status(tx: Connection, settings: Settings, appointment_id: int, user: CurrentUser,
                        to_status: str, reason: str | None) -> tuple[Row, bool]:
    """Set a clinical status, as the appointment's doctor or staff: checked in from an hour before the start,
    completed or no-show once it has started. The same status again changes nothing (False)."""
    if user.role == "Patient":
        raise Forbidden("only the appointment's doctor or the front desk set its status")
    if to_status == "cancelled":
        return await cancel(tx, settings, appointment_id, user, reason)
    appointment = await locked_appointment(tx, appointment_id, user)
    current = appointment["status"]
    if current == to_status:
        return appointment, False
    if to_status not in TRANSITIONS[current] or to_status == "rescheduled":
        raise not_allowed(appointment, to_status)
    now, start = utcnow(), appointment["start_time"]
    if to_status == "checked_in" and now < start - CHECK_IN_FROM:
        raise Conflict(f"check-in opens an hour before the start, at {rfc3339(start - CHECK_IN_FROM)}",
                       reason=TOO_EARLY, possible_from=rfc3339(start - CHECK_IN_FROM))
    if to_status in ("completed", "no_show") and now < start:
        raise Conflict(f"an appointment becomes {to_status} only once it has started, at {rfc3339(start)}",
                       reason=TOO_EARLY, possible_from=rfc3339(start))
    reason = reason.strip() if reason else None
    await tx.execute("change_appointment_status", {"id": appointment_id, "from_status": current,
                                                   "to_status": to_status, "now": now})
    await history.record(tx, [history.entry("status_changed", now, user, appointment_id=appointment_id,
                                            from_status=current, to_status=to_status, reason=reason)])
    return await find_appointment(tx, appointment_id, user), True


async def request_reschedule(
    db: Database, settings: Settings, user: CurrentUser, appointment_id: int, start_time: datetime,
    type_id: int | None, doctor_id: int | None, idempotency_key: str | None,
) -> tuple[int, Row | None, Row]:
    """Store a reschedule request (its patient, or staff), decided by the worker like a booking: the request id, its
    row if new (see store_request), and the appointment it moves.

    Without a type the appointment keeps its length; with the same doctor it keeps its type too, if still offered.
    """
    if user.role == "Doctor":
        raise Forbidden("an appointment is moved by its patient or the front desk")
    appointment = await find_appointment(db, appointment_id, user)

    def check_movable() -> None:  # for a new request only: a replayed Idempotency-Key answers where it stands
        if appointment["status"] != "confirmed":
            raise not_allowed(appointment, "rescheduled")
        now = utcnow()
        if appointment["start_time"] <= now:
            raise Conflict("the appointment has already started", reason="appointment_started")
        check_patient_may_change(appointment, user, settings, now)

    target = doctor_id or appointment["doctor_id"]
    end_time = None
    if type_id is None:
        if target == appointment["doctor_id"] and appointment["appointment_type_id"] and appointment["type_active"]:
            type_id = appointment["appointment_type_id"]
        else:
            try:
                end_time = start_time + (appointment["end_time"] - appointment["start_time"])
            except OverflowError:
                raise InvalidInput("the appointment would end after the year 9999", field="start_time") from None
    request_id, stored = await store_request(
        db, user, appointment["patient_id"], target, start_time, end_time, appointment["notes"], idempotency_key,
        type_id, reschedules=appointment_id, check_new=check_movable)
    return request_id, stored, appointment
