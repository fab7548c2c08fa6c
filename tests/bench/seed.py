"""Seeding a benchmark's clinic straight into MySQL: thousands of doctors in seconds, not thousands of HTTP calls.

Rows are written as the service writes them (users, weekly hours, appointment types, windows, confirmed booking
requests with their appointments), with explicit ids in a fresh database, so one multi-row INSERT per table does.
The loader mints the users' access tokens itself (`issue_access_token`), so no password is ever hashed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pymysql

from service.core.settings import Settings

# Whole and half-hour offsets only, so every zone's 30-minute slots fall on one UTC grid (a patient's clash is then an
# equal start); northern and southern summers both, so some zones are in daylight saving time whenever it runs.
ZONES = ("UTC", "Europe/Berlin", "Europe/London", "America/New_York", "America/Los_Angeles", "America/Sao_Paulo",
         "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "Africa/Johannesburg")
SPECIALTIES = ("Cardiology", "Dermatology", "General practice", "Neurology", "Oncology", "Paediatrics",
               "Psychiatry", "Orthopaedics", "Ophthalmology", "Gynaecology")
# Monday to Friday, 09:00-12:00 and 13:00-17:00 on the doctor's wall clock: 14 half-hour slots a day.
WEEKDAY_HOURS = tuple((weekday, start * 60, end * 60) for weekday in range(1, 6) for start, end in ((9, 12), (13, 17)))
CONSULTATION = {"name": "Consultation", "duration_minutes": 30, "buffer_before_minutes": 0, "buffer_after_minutes": 0}
FIRST_VISIT = {"name": "First visit", "duration_minutes": 45, "buffer_before_minutes": 5, "buffer_after_minutes": 10}


@dataclass
class Doctor:
    id: int
    zone: str
    specialty: str
    types: dict[str, int] = field(default_factory=dict)  # name → id
    slots: list[datetime] = field(default_factory=list)  # free consultation starts (UTC, naive) the load may book


@dataclass
class Appointment:
    id: int
    doctor_id: int
    patient_id: int
    start: datetime


def connect(settings: Settings) -> pymysql.Connection:
    address = settings.mysql
    return pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, autocommit=False)


def local_slots(zone: str, first: date, days: int, hours: Iterable[tuple[int, int, int]],
                step: timedelta = timedelta(minutes=30)) -> list[datetime]:
    """The slot starts (naive UTC) of weekly `hours` on the wall clock of `zone`, over `days` days from `first`."""
    tz, starts = ZoneInfo(zone), []
    for offset in range(days):
        day = first + timedelta(days=offset)
        for weekday, start_minute, end_minute in hours:
            if weekday != day.isoweekday():
                continue
            minute = start_minute
            while minute + step.total_seconds() // 60 <= end_minute:
                local = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(minutes=minute)
                starts.append(local.astimezone(UTC).replace(tzinfo=None))
                minute += int(step.total_seconds() // 60)
    return sorted(starts)


class Seeder:
    """Multi-row INSERTs with explicit ids into a fresh, migrated database."""

    def __init__(self, settings: Settings, seed: int = 7) -> None:
        self.conn = connect(settings)
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC).replace(tzinfo=None)
        self.next_id: dict[str, int] = {}
        for table in ("users", "appointment_types", "booking_requests", "appointments"):
            self.next_id[table] = int(self._scalar(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}"))

    def _scalar(self, sql: str) -> Any:
        with self.conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]

    def _ids(self, table: str, count: int) -> list[int]:
        first = self.next_id[table]
        self.next_id[table] = first + count
        return list(range(first, first + count))

    def _insert(self, sql: str, rows: Sequence[tuple]) -> None:
        with self.conn.cursor() as cursor:
            for at in range(0, len(rows), 5000):  # pymysql folds each chunk into one multi-row INSERT
                cursor.executemany(sql, rows[at:at + 5000])

    def __enter__(self) -> Seeder:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        """Commit what was seeded, or nothing; either way let go of the connection (its locks would keep the
        database from being dropped)."""
        try:
            if failed is None:
                self.conn.commit()
        finally:
            self.conn.close()

    def patients(self, count: int) -> list[int]:
        ids = self._ids("users", count)
        self._insert("INSERT INTO users (id, email, name, role, password_hash, created_at)"
                     " VALUES (%s, %s, %s, 'Patient', 'x', %s)",
                     [(i, f"patient{i}@bench.example", f"Patient {i}", self.now) for i in ids])
        return ids

    def doctors(self, count: int, zones: Sequence[str] = ZONES, specialties: Sequence[str] = SPECIALTIES,
                hours: Sequence[tuple[int, int, int]] = WEEKDAY_HOURS,
                types: Sequence[dict[str, Any]] = (CONSULTATION, FIRST_VISIT)) -> list[Doctor]:
        """`count` doctors spread over `zones` and `specialties`, each with the weekly `hours` and `types`."""
        doctors = [Doctor(i, zones[n % len(zones)], specialties[(n // len(zones)) % len(specialties)])
                   for n, i in enumerate(self._ids("users", count))]
        self._insert("INSERT INTO users (id, email, name, role, specialty, timezone, password_hash, created_at)"
                     " VALUES (%s, %s, %s, 'Doctor', %s, %s, 'x', %s)",
                     [(d.id, f"doctor{d.id}@bench.example", f"Dr {d.id:05d}", d.specialty, d.zone, self.now)
                      for d in doctors])
        self._insert("INSERT INTO weekly_hours (doctor_id, weekday, start_minute, end_minute) VALUES (%s, %s, %s, %s)",
                     [(d.id, *h) for d in doctors for h in hours])
        rows = []
        for d in doctors:
            for t, type_id in zip(types, self._ids("appointment_types", len(types)), strict=True):
                d.types[t["name"]] = type_id
                rows.append((type_id, d.id, t["name"], t["duration_minutes"], t["buffer_before_minutes"],
                             t["buffer_after_minutes"], self.now, self.now))
        self._insert("INSERT INTO appointment_types (id, doctor_id, name, duration_minutes, buffer_before_minutes,"
                     " buffer_after_minutes, min_notice_minutes, max_days_ahead, active, created_at, updated_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s, 0, 365, TRUE, %s, %s)", rows)
        return doctors

    def windows(self, doctors: Sequence[Doctor], spans: Sequence[tuple[datetime, datetime]]) -> None:
        self._insert("INSERT INTO availabilities (doctor_id, start_time, end_time, created_at) VALUES (%s, %s, %s, %s)",
                     [(d.id, start, end, self.now) for d in doctors for start, end in spans])

    def appointments(self, booked: Sequence[tuple[Doctor, int, datetime]]) -> list[Appointment]:
        """Confirmed 30-minute consultations (doctor, patient, start), each with the booking request it came from."""
        request_ids = self._ids("booking_requests", len(booked))
        appointment_ids = self._ids("appointments", len(booked))
        span = timedelta(minutes=30)
        self._insert("INSERT INTO booking_requests (id, patient_id, doctor_id, appointment_type_id, start_time,"
                     " end_time, status, appointment_id, created_at, decided_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s, 'confirmed', %s, %s, %s)",
                     [(r, p, d.id, d.types["Consultation"], s, s + span, a, self.now, self.now)
                      for r, a, (d, p, s) in zip(request_ids, appointment_ids, booked, strict=True)])
        self._insert("INSERT INTO appointments (id, booking_request_id, doctor_id, patient_id, appointment_type_id,"
                     " start_time, end_time, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     [(a, r, d.id, p, d.types["Consultation"], s, s + span, self.now)
                      for r, a, (d, p, s) in zip(request_ids, appointment_ids, booked, strict=True)])
        return [Appointment(a, d.id, p, s) for a, (d, p, s) in zip(appointment_ids, booked, strict=True)]

    def book_fraction(self, doctors: Sequence[Doctor], patients: Sequence[int], first: date, days: int,
                      fraction: float) -> list[Appointment]:
        """Book `fraction` of each doctor's consultation slots over `days` from `first`, to patients who are free
        then; the rest stay in `doctor.slots` for the load to book."""
        taken: dict[int, set[datetime]] = {p: set() for p in patients}
        booked = []
        every = max(1, round(1 / fraction)) if fraction > 0 else 0
        for d in doctors:
            starts = local_slots(d.zone, first, days, WEEKDAY_HOURS)
            free = []
            for n, start in enumerate(starts):
                if every and (n + d.id) % every == 0:
                    patient = self.rng.choice(patients)
                    while start in taken[patient]:  # a patient is never in two places (30-minute UTC grid)
                        patient = self.rng.choice(patients)
                    taken[patient].add(start)
                    booked.append((d, patient, start))
                else:
                    free.append(start)
            d.slots = free
        return self.appointments(booked)


def next_monday(today: date | None = None) -> date:
    today = today or datetime.now(UTC).date()
    return today + timedelta(days=7 - today.weekday())
