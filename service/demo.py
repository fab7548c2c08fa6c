"""`python -m service demo`: a small clinic to try the API with, in a development database.

Everything goes through the core's own functions, so the data obeys the same rules as the API's: accounts
registered, weekly hours and appointment types set under the doctor's lock, bookings stored as requests and decided
by the worker's decision (one of them loses a race for a slot). Run it again and it says the clinic is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.core import accounts, appointment_types, appointments, hours, schedule
from service.core.accounts import CurrentUser, Passwords
from service.core.booking import decide_for_doctor
from service.core.db import Database, Row
from service.core.schedule import Slot
from service.core.settings import Settings
from service.core.times import utcnow

PASSWORD = "demo-clinic-2030"  # printed for anyone to use: the reason production refuses the demo
WEEKDAYS, MONDAY_TO_THURSDAY, TUESDAY_TO_SATURDAY = range(1, 6), range(1, 5), range(2, 7)


@dataclass(frozen=True)
class Doctor:
    email: str
    name: str
    specialty: str
    timezone: str
    hours: list[tuple[int, str, str]]  # (ISO weekday, start, end) on the doctor's wall clock
    types: list[dict[str, object]] = field(default_factory=list)


class DemoIncomplete(Exception):
    """Some of the demo's accounts exist, not all: an earlier run stopped midway."""


def every(days: range, *spans: tuple[str, str]) -> list[tuple[int, str, str]]:
    return [(day, start, end) for day in days for start, end in spans]


def visit(name: str, minutes: int, **rules: int) -> dict[str, object]:
    return {"name": name, "duration_minutes": minutes, "buffer_before_minutes": 0, "buffer_after_minutes": 0,
            "min_notice_minutes": 0, "max_days_ahead": 365, "cancel_notice_minutes": None, **rules}


DOCTORS = [
    Doctor("ada.weber@demo.clinic.example", "Dr Ada Weber", "General practice", "Europe/Berlin",
           every(WEEKDAYS, ("09:00", "12:00"), ("14:00", "17:00")),
           [visit("First visit", 40, buffer_before_minutes=10, buffer_after_minutes=10, min_notice_minutes=120),
            visit("Follow-up", 20)]),
    Doctor("kenji.sato@demo.clinic.example", "Dr Kenji Sato", "Dermatology", "Asia/Tokyo",
           every(MONDAY_TO_THURSDAY, ("10:00", "13:00"), ("14:00", "18:00")), [visit("Skin check", 30)]),
    Doctor("maria.lopez@demo.clinic.example", "Dr Maria Lopez", "Pediatrics", "America/New_York",
           every(TUESDAY_TO_SATURDAY, ("08:00", "12:00"), ("13:00", "16:00")),
           [visit("Checkup", 30, buffer_after_minutes=5), visit("Vaccination", 15, max_days_ahead=60)]),
]
PATIENTS = [("pat.jones@demo.example", "Pat Jones"), ("sam.lee@demo.example", "Sam Lee"),
            ("alex.kim@demo.example", "Alex Kim")]
# (patient, doctor, appointment type), by index; requests of a group are stored together, then decided: the first
# group is two patients asking for the same slot.
BOOKINGS = [[(0, 0, 0), (1, 0, 0)], [(1, 1, 0)], [(2, 2, 0)], [(0, 2, 1)], [(2, 0, 1)]]


def logins(users: dict[str, Row]) -> list[str]:
    lines = []
    for doctor in DOCTORS:
        lines.append(f"  Doctor   {doctor.email:<34} {PASSWORD}   {doctor.name} · {doctor.specialty} · "
                     f"{doctor.timezone}")
    for email, name in PATIENTS:
        lines.append(f"  Patient  {email:<34} {PASSWORD}   {name}")
    return lines


async def fill(settings: Settings) -> str:
    """Make the demo clinic unless it is there; what to print."""
    db = await Database.connect(settings)
    try:
        emails = [d.email for d in DOCTORS] + [email for email, _ in PATIENTS]
        found = {email: row for email in emails if (row := await db.fetch_one("find_user_by_email", {"email": email}))}
        where = settings.mysql.database
        if len(found) == len(emails):
            return "\n".join([f"The demo clinic is already in {where}; nothing was changed. Log in as:", "",
                              *logins(found)])
        if found:
            raise DemoIncomplete(f"the demo clinic in {where} is incomplete (an earlier run stopped midway: "
                               f"{', '.join(found)} exist); start from an empty database "
                               "(`python -m service rollback && python -m service migrate`) or another DATABASE_URL")
        users, types = await make_clinic(db, settings)
        booked = await book(db, settings, users, types)
    finally:
        await db.close()
    return "\n".join([
        f"The demo clinic is ready in {where}. Start the API (`make run`) and log in as any of these:", "",
        *logins(users), "",
        "Bookings made through the booking path (stored as requests, decided as the worker decides them):",
        *booked, "",
        "Try it:",
        "  TOKEN=$(curl -s -X POST localhost:8000/auth/login -H 'content-type: application/json' \\",
        f"    -d '{{\"email\":\"{PATIENTS[0][0]}\",\"password\":\"{PASSWORD}\"}}' \\",
        "    | python3 -c 'import json,sys;print(json.load(sys.stdin)[\"access_token\"])')",
        "  curl -s localhost:8000/appointments/my-appointments -H \"authorization: Bearer $TOKEN\"",
        f"  curl -s 'localhost:8000/doctors/{users[DOCTORS[0].email]['id']}/slots?appointment_type_id="
        f"{types[0][0]['id']}'",
    ])


async def make_clinic(db: Database, settings: Settings) -> tuple[dict[str, Row], list[list[Row]]]:
    """The accounts, each doctor's weekly hours and appointment types."""
    passwords = Passwords(settings.bcrypt_rounds, settings.password_hash_concurrency)
    users: dict[str, Row] = {}
    types: list[list[Row]] = []
    for doctor in DOCTORS:
        row = await accounts.register(db, passwords, email=doctor.email, name=doctor.name, role="Doctor",
                                      password=PASSWORD, specialty=doctor.specialty, timezone=doctor.timezone)
        users[doctor.email] = row
        actor = accounts.user_from_row({**row, "token_version": 0})  # each doctor sets up their own schedule
        async with db.transaction() as tx:
            await hours.replace_weekly_hours(tx, row["id"], actor, hours.check_weekly_hours(doctor.hours))
            types.append([await appointment_types.create(tx, row["id"], actor, values) for values in doctor.types])
    for email, name in PATIENTS:
        users[email] = await accounts.register(db, passwords, email=email, name=name, role="Patient",
                                               password=PASSWORD, specialty=None)
    return users, types


async def book(db: Database, settings: Settings, users: dict[str, Row], types: list[list[Row]]) -> list[str]:
    """The bookings, each group stored then decided by the worker's decision; a line for each."""
    doctors = [users[d.email] for d in DOCTORS]
    patients = [users[email] for email, _ in PATIENTS]
    taken: dict[int, list[tuple[datetime, datetime]]] = {p["id"]: [] for p in patients}
    lines = []
    for group in BOOKINGS:
        stored: list[tuple[int, str]] = []
        slot = None
        for patient_index, doctor_index, type_index in group:
            patient, doctor = patients[patient_index], doctors[doctor_index]
            appointment_type = types[doctor_index][type_index]
            if slot is None:  # the group's first request picks the slot; the others ask for the same one
                slot = await free_slot(db, doctor["id"], appointment_type["id"], taken[patient["id"]])
            request_id, _ = await appointments.store_request(
                db, as_actor(patient), patient["id"], doctor["id"], slot.start_time, None, None, None,
                appointment_type["id"])
            local = slot.local_start_time.strftime("%a %d %b %H:%M")
            stored.append((request_id, f"  {patient['name']} with {doctor['name']}, {appointment_type['name']}, "
                                       f"{local} {DOCTORS[doctor_index].timezone}: "))
            taken[patient["id"]].append((slot.start_time, slot.end_time))
        decided = await decide_for_doctor(db, doctors[group[0][1]]["id"], settings.booking_batch_size)
        outcome = {d.request_id: d.status + (f" ({d.reason})" if d.reason else "") for d in decided.decisions}
        lines += [line + outcome[request_id] for request_id, line in stored]
    return lines


def as_actor(patient: Row) -> CurrentUser:
    """The patient as the one who asks (the history's actor)."""
    return CurrentUser(id=patient["id"], email=patient["email"], name=patient["name"], role="Patient",
                       token_version=0)


async def free_slot(db: Database, doctor_id: int, type_id: int, busy: list[tuple[datetime, datetime]]) -> Slot:
    """The doctor's first bookable slot of this type from tomorrow on that the patient is free for."""
    start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    end = start + timedelta(days=14)
    found, _ = await schedule.slots(db, doctor_id, f"{start.isoformat()}Z", f"{end.isoformat()}Z", 30, type_id,
                                    limit=200)
    return next(slot for slot in found.items
                if not any(slot.start_time < busy_end and busy_start < slot.end_time for busy_start, busy_end in busy))
