"""The front desk, in one place: how a Staff account is made, and what it may do beyond any user.

A staff account is made only by an operator (`python -m service create-staff EMAIL`: create_staff), never by
POST /auth/register. It has no password until the one-time token printed for it sets one (POST
/auth/reset-password); from then on it logs in, and resets a forgotten password, like anyone. Staff may:

- book on behalf of any patient: POST /appointments with `patient_id` (booking_patient); the booking request
  keeps who asked (`requested_by`), and GET /booking-requests/{id} answers that staff member as it answers the
  patient;
- find a patient's id by their email (GET /patients?email=, find_patient), to book for them;
- manage any doctor's weekly hours, time off and appointment types: the `/doctors/{doctor_id}/...` routes
  (check_schedule_access, which every such write asks under the doctor's lock: doctors.lock_schedule);
- read, move, cancel (with a reason) and set the status of any appointment, and read its history
  (sees_every_appointment; the rules themselves are service/core/lifecycle.py's).

Nothing else: a staff member books for no one without a `patient_id` and has no appointments of their own. The
HTTP layer's role guards (service/api/security.py: requires_staff, requires_patient_or_staff,
requires_doctor_or_staff) admit staff to exactly these routes; the rules here decide on the object.
"""

from __future__ import annotations

import secrets

from service.core.accounts import (
    CurrentUser,
    Passwords,
    checked_email,
    insert_user,
    normal_email,
    store_reset_token,
)
from service.core.db import Database, Row
from service.core.errors import Forbidden, InvalidInput, NotFound
from service.core.times import utcnow

MAX_NAME_CHARS = 255  # users.name


async def create_staff(db: Database, passwords: Passwords, email: str, name: str | None,
                       valid_minutes: int) -> tuple[Row, str]:
    """A staff account and the one-time token that sets its password; 409 if the email has an account."""
    email = checked_email(email)
    name = (name if name is not None else email.split("@", 1)[0]).strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"must be 1 to {MAX_NAME_CHARS} characters, not only spaces", field="name")
    # No password until the token sets one: the hash of a secret no one keeps, so a login is checked (and fails)
    # like any other, in the same time.
    row = {"email": email, "name": name, "role": "Staff", "specialty": None, "timezone": "UTC",
           "password_hash": await passwords.hash(secrets.token_urlsafe(32)), "created_at": utcnow()}
    async with db.transaction() as tx:  # never an account without its token, nor a token without its account
        user = await insert_user(tx, row)
        token = await store_reset_token(tx, user["id"], valid_minutes)
    return user, token


async def booking_patient(db: Database, actor: CurrentUser, patient_id: int | None) -> int:
    """Whom a booking is for: a patient books for themselves (and names no one); staff book for the patient they
    name, who must be one (404 otherwise)."""
    if actor.role == "Patient":
        if patient_id is not None:
            raise Forbidden("a patient books for themselves: only staff name a patient_id")
        return actor.id
    if actor.role != "Staff":
        raise Forbidden("Only a patient, or staff on a patient's behalf, may book")
    if patient_id is None:
        raise InvalidInput("staff book on behalf of a patient: give the patient's id", field="patient_id")
    found = await db.fetch_one("find_user_by_id", {"id": patient_id})
    if found is None or found["role"] != "Patient":
        raise NotFound(f"no patient with id {patient_id}")
    return patient_id


async def find_patient(db: Database, email: str) -> Row:
    """The patient with this email (in its normal form, as accounts store it); 404 if no patient has it."""
    found = await db.fetch_one("find_user_by_email", {"email": normal_email(email)})
    if found is None or found["role"] != "Patient":
        raise NotFound("no patient with this email")
    return {key: found[key] for key in ("id", "name", "email")}


def sees_every_appointment(user: CurrentUser) -> bool:
    """Staff read and act on any appointment (each action still by its own rules: lifecycle.py)."""
    return user.role == "Staff"


def check_schedule_access(actor: CurrentUser, doctor_id: int) -> None:
    """A doctor's weekly hours, time off and appointment types are that doctor's to change, and staff's."""
    if actor.role == "Staff" or (actor.role == "Doctor" and actor.id == doctor_id):
        return
    if actor.role == "Doctor":
        raise Forbidden("a doctor changes only their own schedule")
    raise Forbidden("Only the doctor, or staff, may change a doctor's schedule")
