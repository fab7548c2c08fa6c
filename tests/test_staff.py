"""The front desk (Staff) against the real service: the operator's command that makes a staff account, that
registration cannot, booking on a patient's behalf (and who may then read the request), managing any doctor's
schedule through /doctors/{doctor_id}/..., every role on every new route, and the migration's refused rollback."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pymysql
import pytest

from service.core import accounts
from service.core.accounts import Passwords
from service.core.db import Database, migrate
from service.core.errors import InvalidInput
from service.core.settings import Settings
from tests.factory import PASSWORD, Factory, User, at, iso
from tests.support import ROOT, drop_database, problem, rows, snapshot

NOWHERE = 2**53 - 1  # an id no row has
TOKEN_LINE = re.compile(r"^ {4}([\w-]+)$", re.MULTILINE)  # as the reset email prints it


def create_staff_command(test_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "create-staff", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **test_env})


def hours(*intervals: tuple[int, str, str]) -> dict[str, Any]:
    return {"hours": [{"weekday": d, "start": s, "end": e} for d, s, e in intervals]}


def booking(doctor: User, patient_id: int | None = None, hour: float = 10) -> dict[str, Any]:
    body: dict[str, Any] = {"doctor_id": doctor["id"], "start_time": iso(at(hour)), "end_time": iso(at(hour + 0.5))}
    if patient_id is not None:
        body["patient_id"] = patient_id
    return body


def changes(mysql: pymysql.Connection, doctor: User) -> list[tuple[int, str]]:
    return [(row["actor_id"], row["action"]) for row in rows(
        mysql, "SELECT actor_id, action FROM schedule_changes WHERE doctor_id = %s ORDER BY id", doctor["id"])]


# --- 1. made by an operator, never by registration -----------------------------------------------------------------

async def test_create_staff_prints_a_one_time_token_that_sets_the_password(
    client: httpx.AsyncClient, mysql: pymysql.Connection, test_env: dict[str, str],
) -> None:
    made = create_staff_command(test_env, " Desk@Clinic.EXAMPLE ", "--name", "Front Desk")
    assert made.returncode == 0, made.stderr
    assert "POST /auth/reset-password" in made.stdout
    tokens = TOKEN_LINE.findall(made.stdout)
    assert len(tokens) == 1, made.stdout
    [user] = rows(mysql, "SELECT id, email, name, role FROM users")
    assert (user["email"], user["name"], user["role"]) == ("desk@clinic.example", "Front Desk", "Staff")
    assert rows(mysql, "SELECT user_id FROM password_reset_tokens WHERE used_at IS NULL") == [{"user_id": user["id"]}]
    assert tokens[0] not in str(rows(mysql, "SELECT token_hash FROM password_reset_tokens"))  # only its hash

    # No password until the token sets one.
    login = {"email": "desk@clinic.example", "password": PASSWORD}
    problem(await client.post("/auth/login", json=login), 401)
    reset = await client.post("/auth/reset-password", json={"token": tokens[0], "new_password": PASSWORD})
    assert reset.status_code == 204, reset.text
    logged_in = await client.post("/auth/login", json=login)
    assert logged_in.status_code == 200, logged_in.text
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {logged_in.json()['access_token']}"})
    assert (me.json()["id"], me.json()["role"]) == (user["id"], "Staff")
    # Once.
    again = await client.post("/auth/reset-password", json={"token": tokens[0], "new_password": "another-one-9"})
    problem(again, 400, "token")


@pytest.mark.parametrize(("args", "says"), [
    (["taken@clinic.example"], "already exists"),
    (["not-an-email"], "email"),
    (["new@clinic.example", "--name", "   "], "name"),
])
async def test_create_staff_refuses_plainly_and_makes_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, test_env: dict[str, str],
    args: list[str], says: str,
) -> None:
    await factory.patient(email="taken@clinic.example")
    before = snapshot(mysql)
    refused = create_staff_command(test_env, *args)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert snapshot(mysql) == before


@pytest.mark.parametrize("role", ["Staff", "staff", "Admin"])
async def test_registration_cannot_make_staff(client: httpx.AsyncClient, mysql: pymysql.Connection,
                                              role: str) -> None:
    response = await client.post("/auth/register", json={
        "email": "sneaky@clinic.example", "name": "Sneaky", "role": role, "password": PASSWORD})
    body = problem(response, 400, "role")  # as for any role there is not: the value and the field named
    assert body["errors"] == [{"field": "role", "message": f"Invalid enum value '{role}' - at `$.role`"}]
    assert rows(mysql, "SELECT id FROM users") == []


async def test_the_core_registration_refuses_staff_too(db: Database, mysql: pymysql.Connection,
                                                       settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="create-staff"):
        await accounts.register(db, Passwords(4), email="x@clinic.example", name="X", role="Staff",  # type: ignore
                                password=PASSWORD, specialty=None)
    assert rows(mysql, "SELECT id FROM users") == []


async def test_staff_reset_a_forgotten_password_and_log_in_like_anyone(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    staff = await factory.staff()
    me = await client.get("/auth/me", headers=staff.headers)
    assert me.json()["role"] == "Staff"
    assert (await client.post("/auth/forgot-password", json={"email": staff["email"]})).status_code == 202


# --- 2. booking on a patient's behalf ------------------------------------------------------------------------------

async def test_staff_book_for_a_patient_and_the_request_keeps_who_asked(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, patient = await factory.staff(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    response = await client.post("/appointments", json=booking(doctor, patient["id"]),
                                 headers={**staff.headers, "Prefer": "wait=10"})
    assert response.status_code == 201, response.text
    appointment = response.json()
    assert (appointment["patient_id"], appointment["doctor_id"]) == (patient["id"], doctor["id"])
    [request] = rows(mysql, "SELECT id, patient_id, requested_by, status FROM booking_requests")
    assert request == {"id": appointment["booking_request_id"], "patient_id": patient["id"],
                       "requested_by": staff["id"], "status": "confirmed"}
    # The appointment is the patient's: in their list, and the staff member has none.
    mine = await client.get("/appointments/my-appointments", headers=patient.headers)
    assert [a["id"] for a in mine.json()["items"]] == [appointment["id"]]
    problem(await client.get("/appointments/my-appointments", headers=staff.headers), 403)

    # The request answers its patient and the staff member who asked; no one else, and says who asked.
    url = f"/booking-requests/{request['id']}"
    for reader in (staff, patient):
        read = await client.get(url, headers=reader.headers)
        assert read.status_code == 200, read.text
        assert (read.json()["patient_id"], read.json()["requested_by"]) == (patient["id"], staff["id"])
    for stranger in (await factory.staff(), await factory.patient(), doctor):
        problem(await client.get(url, headers=stranger.headers), 404)
    # A patient's own booking names no requester.
    own = await factory.booked(patient, doctor["id"], at(12), at(12.5))
    assert rows(mysql, "SELECT requested_by FROM booking_requests WHERE id = %s", own["booking_request_id"]) == [
        {"requested_by": None}]


async def test_staff_find_a_patient_by_email_and_no_one_else_can(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    staff, doctor, patient = await factory.staff(), await factory.doctor(), await factory.patient()
    found = await client.get("/patients", params={"email": f"  {patient['email'].upper()} "}, headers=staff.headers)
    assert found.json() == {"id": patient["id"], "name": patient["name"], "email": patient["email"]}, found.text
    for not_a_patient in (doctor["email"], staff["email"], "nobody@clinic.example", "not an email"):
        problem(await client.get("/patients", params={"email": not_a_patient}, headers=staff.headers), 404)
    assert "'email'" in problem(await client.get("/patients", headers=staff.headers), 400)["detail"]
    for caller in (patient, doctor):
        problem(await client.get("/patients", params={"email": patient["email"]}, headers=caller.headers), 403)
    problem(await client.get("/patients", params={"email": patient["email"]}), 401)


async def test_a_staff_booking_is_decided_by_the_worker_and_polled_by_its_requester(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, other, patient = (await factory.staff(), await factory.doctor(), await factory.doctor(),
                                     await factory.patient())
    for each in (doctor, other):
        await factory.window(each, at(9), at(17))
    await factory.booked(patient, other["id"], at(10), at(10.5))  # the patient is busy then: staff cannot double-book
    accepted = await client.post("/appointments", json=booking(doctor, patient["id"], hour=10),
                                 headers=staff.headers)
    assert accepted.status_code == 202, accepted.text
    polled = await client.get(accepted.headers["location"], params={"wait": 10}, headers=staff.headers)
    assert (polled.json()["status"], polled.json()["reason"]) == ("rejected", "patient_busy"), polled.text
    waited = await client.post("/appointments", json=booking(doctor, patient["id"], hour=10),
                               headers={**staff.headers, "Prefer": "wait=10"})
    assert problem(waited, 409)["reason"] == "patient_busy"


async def test_idempotency_keys_are_the_patients_and_a_staff_replay_is_the_same_request(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, patient = await factory.staff(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    key = {"Idempotency-Key": "desk-1"}
    first = await client.post("/appointments", json=booking(doctor, patient["id"]), headers={**staff.headers, **key})
    replay = await client.post("/appointments", json=booking(doctor, patient["id"]), headers={**staff.headers, **key})
    assert first.status_code == replay.status_code == 202, (first.text, replay.text)
    assert first.json()["request_id"] == replay.json()["request_id"]
    # The same key and body from the patient, or from other staff, is not that request: each would read another's.
    refused = problem(await client.post("/appointments", json=booking(doctor), headers={**patient.headers, **key}),
                      409)
    assert "someone else" in refused["detail"]
    other = await factory.staff()
    problem(await client.post("/appointments", json=booking(doctor, patient["id"]), headers={**other.headers, **key}),
            409)
    assert len(rows(mysql, "SELECT id FROM booking_requests")) == 1


async def test_a_patient_cannot_book_for_anyone_and_staff_must_name_a_patient(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, other_doctor = await factory.staff(), await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    before = snapshot(mysql)
    for patient_id in (patient["id"], other_patient["id"]):
        assert "staff" in problem(await client.post("/appointments", json=booking(doctor, patient_id),
                                                    headers=patient.headers), 403)["detail"]
    problem(await client.post("/appointments", json=booking(doctor), headers=staff.headers), 400, "patient_id")
    for not_a_patient in (doctor["id"], other_doctor["id"], staff["id"], NOWHERE):
        problem(await client.post("/appointments", json=booking(doctor, not_a_patient), headers=staff.headers), 404)
    for bad in (0, -1, "1", 2**64):
        problem(await client.post("/appointments", json=booking(doctor, bad), headers=staff.headers), 400)  # type: ignore[arg-type]
    # Doctors still cannot book, whoever they name.
    for body in (booking(doctor), booking(doctor, patient["id"])):
        problem(await client.post("/appointments", json=body, headers=other_doctor.headers), 403)
    assert snapshot(mysql) == before


async def test_staff_do_nothing_else(client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection) -> None:
    staff, doctor, patient = await factory.staff(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(10.5))
    before = snapshot(mysql)
    forbidden = [
        ("GET", "/appointments/my-appointments", None),
        ("GET", "/booking-requests", None),
        ("GET", "/doctors/my-appointments", None),
        ("PATCH", "/doctors/me", {"timezone": "Asia/Tokyo"}),
        ("POST", "/doctors/availability", {"start_time": iso(at(18)), "end_time": iso(at(19))}),
        ("PUT", "/doctors/me/weekly-hours", hours((1, "09:00", "12:00"))),
        ("POST", "/doctors/me/time-off", {"start_time": iso(at(14)), "end_time": iso(at(15))}),
        ("GET", "/doctors/me/time-off", None),
        ("POST", "/doctors/me/appointment-types", {"name": "Desk", "duration_minutes": 30}),
    ]
    for method, path, body in forbidden:
        problem(await client.request(method, path, json=body, headers=staff.headers), 403)
    # Appointments: staff read any (tests/test_lifecycle.py has what they change), but cancel only with a reason.
    assert (await client.get(f"/appointments/{appointment['id']}", headers=staff.headers)).status_code == 200
    problem(await client.delete(f"/appointments/{appointment['id']}", headers=staff.headers), 400, "reason")
    assert snapshot(mysql) == before


# --- 3. any doctor's schedule ----------------------------------------------------------------------------------------

async def test_staff_manage_another_doctors_hours_time_off_and_types(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor = await factory.staff(), await factory.doctor()
    base = f"/doctors/{doctor['id']}"
    slots = {"from": iso(at(0)), "to": iso(at(24)), "duration": 30}
    assert (await client.get(f"{base}/slots", params=slots)).json()["slots"] == []  # and now cached for a second

    weekday = at(0).isoweekday()
    put = await client.put(f"{base}/weekly-hours", json=hours((weekday, "09:00", "10:00")), headers=staff.headers)
    assert put.status_code == 200, put.text
    assert put.json()["hours"] == [{"weekday": weekday, "start": "09:00", "end": "10:00"}]
    assert (await client.get(f"{base}/weekly-hours")).json() == put.json()
    # The change retires the doctor's cached slots at once, as the doctor's own would.
    assert [s["start_time"] for s in (await client.get(f"{base}/slots", params=slots)).json()["slots"]] == [
        iso(at(9)), iso(at(9.5))]

    off = await client.post(f"{base}/time-off", headers=staff.headers,
                            json={"start_time": iso(at(9.5)), "end_time": iso(at(10)), "reason": "Training"})
    assert off.status_code == 201, off.text
    assert off.json()["doctor_id"] == doctor["id"]
    assert rows(mysql, "SELECT doctor_id, created_by FROM time_off") == [
        {"doctor_id": doctor["id"], "created_by": staff["id"]}]
    listed = await client.get(f"{base}/time-off", headers=staff.headers)
    assert [t["id"] for t in listed.json()] == [off.json()["id"]]
    assert (await client.get("/doctors/me/time-off", headers=doctor.headers)).json() == listed.json()
    assert (await client.delete(f"{base}/time-off/{off.json()['id']}", headers=staff.headers)).status_code == 204
    assert rows(mysql, "SELECT id FROM time_off") == []

    created = await client.post(f"{base}/appointment-types", headers=staff.headers,
                                json={"name": " Check-up ", "duration_minutes": 20})
    assert created.status_code == 201, created.text
    kind = created.json()
    assert (kind["doctor_id"], kind["name"]) == (doctor["id"], "Check-up")
    changed = await client.patch(f"{base}/appointment-types/{kind['id']}", headers=staff.headers,
                                 json={"duration_minutes": 30})
    assert changed.json()["duration_minutes"] == 30, changed.text
    assert (await client.get(f"{base}/appointment-types")).json() == [changed.json()]
    assert (await client.delete(f"{base}/appointment-types/{kind['id']}", headers=staff.headers)).status_code == 204
    assert (await client.get(f"{base}/appointment-types")).json() == []

    assert changes(mysql, doctor) == [(staff["id"], action) for action in (
        "weekly_hours_replaced", "time_off_added", "time_off_withdrawn", "appointment_type_created",
        "appointment_type_changed", "appointment_type_deactivated")]


async def test_a_doctor_uses_either_path_for_their_own_schedule_and_each_change_names_them(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    base = f"/doctors/{doctor['id']}"
    assert (await client.put(f"{base}/weekly-hours", json=hours((1, "09:00", "12:00")),
                             headers=doctor.headers)).status_code == 200
    await factory.weekly_hours(doctor, [(2, "09:00", "12:00")])
    kind = await factory.appointment_type(doctor)
    off = await factory.time_off(doctor, at(12), at(13))
    assert (await client.get(f"{base}/time-off", headers=doctor.headers)).json()[0]["id"] == off["id"]
    assert (await client.delete(f"{base}/time-off/{off['id']}", headers=doctor.headers)).status_code == 204
    assert (await client.patch(f"{base}/appointment-types/{kind['id']}", json={"name": "Renamed"},
                               headers=doctor.headers)).status_code == 200
    assert changes(mysql, doctor) == [(doctor["id"], action) for action in (
        "weekly_hours_replaced", "weekly_hours_replaced", "appointment_type_created", "time_off_added",
        "time_off_withdrawn", "appointment_type_changed")]


async def test_staff_time_off_cancels_appointments_inside_it_only_when_asked(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, patient = await factory.staff(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    appointment = await factory.booked(patient, doctor["id"], at(10), at(10.5))
    body = {"start_time": iso(at(9)), "end_time": iso(at(12)), "reason": "Flooded clinic"}
    inside = problem(await client.post(f"/doctors/{doctor['id']}/time-off", json=body, headers=staff.headers), 409)
    assert [a["id"] for a in inside["appointments"]] == [appointment["id"]]
    made = await client.post(f"/doctors/{doctor['id']}/time-off", json={**body, "cancel_appointments": True},
                             headers=staff.headers)
    assert made.json()["cancelled_appointment_ids"] == [appointment["id"]], made.text
    assert rows(mysql, "SELECT status, cancelled_by, cancel_reason FROM appointments") == [
        {"status": "cancelled", "cancelled_by": staff["id"], "cancel_reason": "Flooded clinic"}]


# --- 4. every role on every new route ------------------------------------------------------------------------------

async def test_every_role_on_every_new_schedule_route(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    staff, doctor, other_doctor = await factory.staff(), await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    kind = await factory.appointment_type(doctor)
    off = await factory.time_off(doctor, at(12), at(13))
    others_kind = await factory.appointment_type(other_doctor)
    others_off = await factory.time_off(other_doctor, at(12), at(13))

    def routes(doctor_id: int, type_id: int, time_off_id: int) -> list[tuple[str, str, Any]]:
        base = f"/doctors/{doctor_id}"
        return [
            ("PUT", f"{base}/weekly-hours", hours((1, "09:00", "12:00"))),
            ("POST", f"{base}/time-off", {"start_time": iso(at(14)), "end_time": iso(at(15))}),
            ("GET", f"{base}/time-off", None),
            ("DELETE", f"{base}/time-off/{time_off_id}", None),
            ("POST", f"{base}/appointment-types", {"name": "New", "duration_minutes": 30}),
            ("PATCH", f"{base}/appointment-types/{type_id}", {"buffer_after_minutes": 10}),
            ("DELETE", f"{base}/appointment-types/{type_id}", None),
        ]

    doctors_routes = routes(doctor["id"], kind["id"], off["id"])
    before = snapshot(mysql)
    for method, path, body in doctors_routes:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            problem(await client.request(method, path, json=body, headers=headers), 401)
        # Patients, this one or another, may not; nor may another doctor. Nobody learns more than that.
        for caller in (patient, other_patient, other_doctor):
            problem(await client.request(method, path, json=body, headers=caller.headers), 403)
        # Staff: a doctor who does not exist (or is no doctor) is a 404.
        for nobody in (NOWHERE, patient["id"], staff["id"]):
            elsewhere = path.replace(f"/doctors/{doctor['id']}/", f"/doctors/{nobody}/")
            problem(await client.request(method, elsewhere, json=body, headers=staff.headers), 404)
    # Another doctor's type or time off, named under this doctor: not this doctor's, 404, for staff and doctor alike.
    for method, path, body in routes(doctor["id"], others_kind["id"], others_off["id"]):
        if method in ("PATCH", "DELETE"):
            for caller in (staff, doctor):
                problem(await client.request(method, path, json=body, headers=caller.headers), 404)
    assert snapshot(mysql) == before

    # The doctor themselves, and staff, go through.
    expected = [200, 201, 200, 204, 201, 200, 204]
    assert [(await client.request(method, path, json=body, headers=doctor.headers)).status_code
            for method, path, body in doctors_routes] == expected
    staff_off = await factory.time_off(other_doctor, at(16), at(17))
    assert [(await client.request(method, path, json=body, headers=staff.headers)).status_code
            for method, path, body in routes(other_doctor["id"], others_kind["id"], staff_off["id"])] == expected


# --- 5. the migration -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def scratch(settings: Settings) -> Iterator[Settings]:
    database = Settings.from_env({"APP_ENV": "test", "DATABASE_URL": settings.mysql.url(f"staff_{os.getpid()}")})
    drop_database(database)
    try:
        yield database
    finally:
        drop_database(database)


def test_the_staff_migration_rolls_back_only_without_staff_accounts(settings: Settings) -> None:
    with scratch(settings) as database:
        migrate(database)
        address = database.mysql
        conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                               database=address.database, autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute("INSERT INTO users (email, name, role, password_hash, created_at) "
                               "VALUES ('desk@x.example', 'Desk', 'Staff', 'x', NOW())")
            with pytest.raises(Exception, match=r"staff accounts exist \[\d+\]"):
                migrate(database, rollback_all=True)
            with conn.cursor() as cursor:  # refused before anything changed
                cursor.execute("SELECT role FROM users")
                assert cursor.fetchall() == (("Staff",),)
                cursor.execute("SHOW COLUMNS FROM booking_requests LIKE 'requested_by'")
                assert cursor.fetchall()
                cursor.execute("DELETE FROM users")
        finally:
            conn.close()
        assert "0010_staff" in migrate(database, rollback_all=True)
        assert "0010_staff" in migrate(database)

