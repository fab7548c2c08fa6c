"""Clinic schedules' rules against the real service: buffers, notice and horizon at their exact boundaries (slot
reads and the worker's decisions alike), time off, appointment types, schedule changes racing bookings across two
API processes and three workers, a worker killed in the middle of a typed decision, bad input, and who may do what.

Times here are aware UTC datetimes toward the API and naive UTC ones toward the rows, as MySQL stores them.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pymysql
import pytest

from service.core.availability import OUTSIDE_AVAILABILITY, SLOT_TAKEN, TOO_FAR_AHEAD, TOO_SOON
from service.core.booking import TYPE_UNAVAILABLE
from service.core.settings import Settings
from tests.factory import Factory, User, at, day, iso
from tests.support import (
    Rig,
    accepted_ids,
    lock_waits,
    no_overlapping_confirmed,
    problem,
    rows,
    settle,
    snapshot,
    until,
)

STEP = timedelta(minutes=5)  # the grid
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ALL_WEEK = [(weekday, "08:00", "17:00") for weekday in range(1, 8)]
NOWHERE = 2**53 - 1  # an id no row has
T = TypeVar("T")


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def grid_floor(moment: datetime) -> datetime:
    """The grid point at or before `moment`."""
    return moment - (moment - EPOCH) % STEP


def grid(start: datetime, end: datetime) -> list[datetime]:
    """Every grid point in [start, end)."""
    return [start + k * STEP for k in range((end - start) // STEP)]


async def book(client: httpx.AsyncClient, patient: User, doctor_id: int, start: datetime, *,
               type_id: int | None = None, end: datetime | None = None, wait: int = 10) -> httpx.Response:
    """POST /appointments by type (the end derived) or by start and end; `wait` 0 answers 202 at once."""
    body: dict[str, Any] = {"doctor_id": doctor_id, "start_time": iso(start)}
    if type_id is not None:
        body["appointment_type_id"] = type_id
    if end is not None:
        body["end_time"] = iso(end)
    headers = {**patient.headers, **({"Prefer": f"wait={wait}"} if wait else {})}
    return await client.post("/appointments", json=body, headers=headers)


def outcome(response: httpx.Response) -> tuple[str, str | None]:
    """A `Prefer: wait` answer as (status, reason)."""
    if response.status_code == 201:
        return "confirmed", None
    assert response.status_code == 409, response.text
    return "rejected", response.json()["reason"]


async def decided(client: httpx.AsyncClient, patient: User, request_id: int) -> dict[str, Any]:
    response = await client.get(f"/booking-requests/{request_id}", params={"wait": 20}, headers=patient.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] != "pending", response.text
    return response.json()


async def slot_starts(client: httpx.AsyncClient, doctor_id: int, start: datetime, end: datetime,
                      **params: Any) -> list[datetime]:
    response = await client.get(f"/doctors/{doctor_id}/slots", params={"from": iso(start), "to": iso(end),
                                                                       "limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [datetime.fromisoformat(slot["start_time"]) for slot in response.json()["slots"]]


def no_overlapping_blocked_spans(mysql: pymysql.Connection) -> None:
    """No two confirmed appointments of a doctor whose blocked spans, [start − before, end + after) with the
    buffers each was booked with, overlap."""
    assert rows(mysql, """
        SELECT a.id, b.id FROM appointments a JOIN appointments b
          ON a.id < b.id AND a.doctor_id = b.doctor_id AND a.status = 'confirmed' AND b.status = 'confirmed'
         AND a.start_time - INTERVAL a.buffer_before_minutes MINUTE
             < b.end_time + INTERVAL b.buffer_after_minutes MINUTE
         AND b.start_time - INTERVAL b.buffer_before_minutes MINUTE
             < a.end_time + INTERVAL a.buffer_after_minutes MINUTE
    """) == []


@contextmanager
def doctor_row_locked(settings: Settings, doctor_id: int) -> Iterator[None]:
    """Hold the doctor's row lock from a connection of the test's own, as a long schedule write would, so that the
    service's writers queue behind it in a known order (InnoDB grants a row's waiting locks first come, first
    served)."""
    address = settings.mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, autocommit=False)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (doctor_id,))
        yield
    finally:
        conn.commit()
        conn.close()


async def until_waiting(mysql: pymysql.Connection, settings: Settings, count: int) -> None:
    await until(lambda: lock_waits(mysql, settings.mysql.database) >= count,
                f"{count} transaction(s) waiting for the doctor's row lock", every=0.15)


async def refused(mysql: pymysql.Connection, request: Awaitable[httpx.Response], status: int = 400,
                  field: str | None = None) -> dict[str, Any]:
    """Send `request`: a problem with this status (naming `field`, if given), and not a row changed."""
    before = snapshot(mysql)
    body = problem(await request, status, field)
    assert snapshot(mysql) == before
    return body


async def later(seconds: float, action: Awaitable[T]) -> T:
    await asyncio.sleep(seconds)
    return await action


# --- 1. buffers, notice and horizon, each at its exact boundary ----------------------------------------------------

@pytest.mark.parametrize(("existing", "new"), [
    ((15, 10), None),  # the existing appointment's own buffers keep a plain booking away
    ((0, 0), (15, 10)),  # the new booking's buffers keep it away from an appointment without any
    ((15, 10), (20, 5)),  # both
    ((240, 240), (240, 240)),  # the largest buffers there are
], ids=["existing-buffers", "new-buffers", "both", "largest"])
async def test_buffers_at_their_exact_boundaries(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
    existing: tuple[int, int], new: tuple[int, int] | None,
) -> None:
    doctor = await factory.doctor()
    patients = [await factory.patient() for _ in range(5)]
    start_of_day = day(2)
    await factory.window(doctor, start_of_day, start_of_day + timedelta(hours=24))
    before, after = existing
    existing_type = await factory.appointment_type(doctor, duration_minutes=30, buffer_before_minutes=before,
                                                   buffer_after_minutes=after)
    noon = start_of_day + timedelta(hours=12)
    assert outcome(await book(client, patients[0], doctor["id"], noon, type_id=existing_type["id"])) == (
        "confirmed", None)

    # New bookings last 5 minutes, so every grid point is a slot: of a type with `new` buffers, or plain.
    new_before, new_after = new or (0, 0)
    new_type = None if new is None else await factory.appointment_type(
        doctor, duration_minutes=5, buffer_before_minutes=new_before, buffer_after_minutes=new_after)
    kind = {"duration": 5} if new_type is None else {"appointment_type_id": new_type["id"]}
    # The last start whose blocked span ends where the existing one's begins, and the first that begins where it ends.
    last_before = noon - minutes(before) - STEP - minutes(new_after)
    first_after = noon + minutes(30 + after + new_before)
    offered = await slot_starts(client, doctor["id"], start_of_day, start_of_day + timedelta(hours=24), **kind)
    assert offered == [s for s in grid(start_of_day, start_of_day + timedelta(hours=24))
                       if s <= last_before or s >= first_after]

    async def ask(patient: User, start: datetime) -> tuple[str, str | None]:
        return outcome(await book(client, patient, doctor["id"], start,
                                  type_id=new_type and new_type["id"], end=None if new_type else start + STEP))

    assert await ask(patients[1], last_before + STEP) == ("rejected", SLOT_TAKEN)
    assert await ask(patients[2], first_after - STEP) == ("rejected", SLOT_TAKEN)
    assert await ask(patients[3], last_before) == ("confirmed", None)
    assert await ask(patients[4], first_after) == ("confirmed", None)

    stored = rows(mysql, "SELECT start_time, end_time, appointment_type_id, buffer_before_minutes AS b,"
                         " buffer_after_minutes AS a FROM appointments WHERE status = 'confirmed' ORDER BY start_time")
    new_id = new_type and new_type["id"]
    assert [(r["start_time"], r["end_time"], r["appointment_type_id"], r["b"], r["a"]) for r in stored] == [
        (naive(last_before), naive(last_before + STEP), new_id, new_before, new_after),
        (naive(noon), naive(noon + minutes(30)), existing_type["id"], before, after),
        (naive(first_after), naive(first_after + STEP), new_id, new_before, new_after),
    ]
    no_overlapping_blocked_spans(mysql)


async def test_the_appointment_lies_inside_availability_its_buffers_may_reach_outside(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(10), at(11))
    buffered = await factory.appointment_type(doctor, duration_minutes=60, buffer_before_minutes=30,
                                              buffer_after_minutes=30)
    longer = await factory.appointment_type(doctor, duration_minutes=65)
    assert await slot_starts(client, doctor["id"], at(9), at(12), appointment_type_id=buffered["id"]) == [at(10)]
    assert await slot_starts(client, doctor["id"], at(9), at(12), appointment_type_id=longer["id"]) == []
    assert outcome(await book(client, other, doctor["id"], at(10), type_id=longer["id"])) == (
        "rejected", OUTSIDE_AVAILABILITY)
    assert outcome(await book(client, patient, doctor["id"], at(10), type_id=buffered["id"])) == ("confirmed", None)
    assert rows(mysql, "SELECT start_time, end_time FROM appointments") == [
        {"start_time": naive(at(10)), "end_time": naive(at(11))}]


@pytest.mark.parametrize("notice", [60, 43_200])
async def test_minimum_notice_at_its_exact_boundary(client: httpx.AsyncClient, factory: Factory, notice: int) -> None:
    doctor, early, timely = await factory.doctor(), await factory.patient(), await factory.patient()
    # Choose the notice (a whole number of minutes, not necessarily on the grid) so that now + notice lies less
    # than a minute past a grid point G. Then G is too soon, by under a minute, and stays so (time only moves on);
    # G + 5 min is soon enough for four minutes more at least, long after this test has its answers.
    now = datetime.now(UTC)
    minutes_past_grid = (now - grid_floor(now)) // minutes(1)
    notice -= (notice + minutes_past_grid) % 5
    boundary = grid_floor(now + minutes(notice))
    assert timedelta(0) <= now + minutes(notice) - boundary < minutes(1)
    kind = await factory.appointment_type(doctor, duration_minutes=5, min_notice_minutes=notice)
    await factory.window(doctor, boundary - minutes(20), boundary + minutes(20))

    offered = await slot_starts(client, doctor["id"], boundary - minutes(20), boundary + minutes(20),
                                appointment_type_id=kind["id"])
    assert offered == grid(boundary + STEP, boundary + minutes(20))
    assert outcome(await book(client, early, doctor["id"], boundary, type_id=kind["id"])) == ("rejected", TOO_SOON)
    assert outcome(await book(client, timely, doctor["id"], boundary + STEP, type_id=kind["id"])) == (
        "confirmed", None)


async def clear_of_the_next_grid_point(margin: timedelta = timedelta(seconds=15)) -> datetime:
    """Now, at least `margin` before the clock's next grid point (waiting past it if it is closer)."""
    now = datetime.now(UTC)
    left = grid_floor(now) + STEP - now
    if left < margin:
        await asyncio.sleep(left.total_seconds() + 0.2)
        now = datetime.now(UTC)
    return now


@pytest.mark.parametrize("days", [1, None, 730], ids=["1-day", "default-365", "730-days"])
async def test_horizon_at_its_exact_boundary(client: httpx.AsyncClient, factory: Factory, days: int | None) -> None:
    doctor, near, far = await factory.doctor(), await factory.patient(), await factory.patient()
    kind = await factory.appointment_type(doctor, duration_minutes=5,
                                          **({"max_days_ahead": days} if days is not None else {}))
    assert kind["max_days_ahead"] == (days or 365)
    # A horizon is whole days, so where it falls on the grid is up to the clock: G, the last grid point within it,
    # stays within; G + 5 min is beyond it until the clock reaches its next grid point, at least 15 s away.
    now = await clear_of_the_next_grid_point()
    boundary = grid_floor(now + timedelta(days=days or 365))
    await factory.window(doctor, boundary - minutes(20), boundary + minutes(20))

    offered = await slot_starts(client, doctor["id"], boundary - minutes(20), boundary + minutes(20),
                                appointment_type_id=kind["id"])
    assert offered == grid(boundary - minutes(20), boundary + STEP)
    assert outcome(await book(client, far, doctor["id"], boundary + STEP, type_id=kind["id"])) == (
        "rejected", TOO_FAR_AHEAD)
    assert outcome(await book(client, near, doctor["id"], boundary, type_id=kind["id"])) == ("confirmed", None)


# --- 2. time off ---------------------------------------------------------------------------------------------------

async def test_time_off_hides_slots_refuses_bookings_and_cancels_only_when_told(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    patients = [await factory.patient() for _ in range(4)]
    await factory.weekly_hours(doctor, ALL_WEEK)
    buffered = await factory.appointment_type(doctor, duration_minutes=30, buffer_before_minutes=30)
    touching_before = await factory.booked(patients[0], doctor["id"], at(9.5), at(10))
    inside = await factory.booked(patients[1], doctor["id"], at(10), at(10.5))
    # Outside the time off, though its buffer reaches into it: not the time off's business.
    buffer_inside = await book(client, patients[2], doctor["id"], at(11), type_id=buffered["id"])
    assert buffer_inside.status_code == 201, buffer_inside.text
    body = {"start_time": iso(at(10)), "end_time": iso(at(11)), "reason": "Conference"}
    before = snapshot(mysql)

    refused = problem(await client.post("/doctors/me/time-off", json=body, headers=doctor.headers), 409)
    assert refused["appointments"] == [{"id": inside["id"], "patient_id": patients[1]["id"],
                                        "start_time": iso(at(10)), "end_time": iso(at(10.5))}]
    for reason in (None, "", "   "):
        without_reason = {**body, "reason": reason, "cancel_appointments": True}
        problem(await client.post("/doctors/me/time-off", json=without_reason, headers=doctor.headers), 400, "reason")
    assert snapshot(mysql) == before

    created = await client.post("/doctors/me/time-off", json={**body, "cancel_appointments": True},
                                headers=doctor.headers)
    assert created.status_code == 201, created.text
    time_off = created.json()
    assert time_off["cancelled_appointment_ids"] == [inside["id"]] and time_off["reason"] == "Conference"
    [stored] = rows(mysql, "SELECT * FROM time_off")
    assert (stored["id"], stored["start_time"], stored["end_time"], stored["created_by"]) == (
        time_off["id"], naive(at(10)), naive(at(11)), doctor["id"])
    appointments = {r["id"]: r for r in rows(mysql, "SELECT * FROM appointments")}
    cancelled = appointments[inside["id"]]
    assert (cancelled["status"], cancelled["cancel_reason"], cancelled["cancelled_by"]) == (
        "cancelled", "Conference", doctor["id"])
    assert cancelled["cancelled_at"] == stored["created_at"]  # one transaction, one moment
    assert [appointments[a]["status"] for a in (touching_before["id"], buffer_inside.json()["id"])] == [
        "confirmed", "confirmed"]
    seen = await client.get(f"/appointments/{inside['id']}", headers=patients[1].headers)
    assert (seen.json()["status"], seen.json()["cancel_reason"]) == ("cancelled", "Conference")

    # Slots: [08:00, 10:00) and [11:00, 17:00), each on its own grid, less what is taken (buffer included).
    expected = [at(8), at(8.5), at(9)] + [at(h / 2) for h in range(23, 34)]
    assert await slot_starts(client, doctor["id"], at(7), at(18)) == expected
    available = await client.get(f"/doctors/{doctor['id']}/availability", params={"from": iso(at(7)),
                                                                                  "to": iso(at(18))})
    assert available.status_code == 200, available.text
    assert [(a["start_time"], a["end_time"], [(f["start_time"], f["end_time"]) for f in a["free"]])
            for a in available.json()] == [(iso(at(8)), iso(at(10)), [(iso(at(8)), iso(at(9.5)))]),
                                           (iso(at(11)), iso(at(17)), [(iso(at(11.5)), iso(at(17)))])]
    assert outcome(await factory.book(patients[3], doctor["id"], at(10), at(10.5), wait=10)) == (
        "rejected", OUTSIDE_AVAILABILITY)
    listed = await client.get("/doctors/me/time-off", headers=doctor.headers)
    assert [(t["id"], t["reason"]) for t in listed.json()] == [(time_off["id"], "Conference")]

    # Another doctor's id is no time off of theirs: 404 as for one that does not exist, and it stays.
    path = f"/doctors/me/time-off/{time_off['id']}"
    problem(await client.delete(path, headers=other_doctor.headers), 404)
    problem(await client.delete(f"/doctors/me/time-off/{NOWHERE}", headers=doctor.headers), 404)
    assert (await client.get("/doctors/me/time-off", headers=other_doctor.headers)).json() == []
    assert len(rows(mysql, "SELECT id FROM time_off")) == 1

    # Withdrawn: its time is offered and bookable again.
    assert (await client.delete(path, headers=doctor.headers)).status_code == 204
    assert rows(mysql, "SELECT id FROM time_off") == []
    assert at(10) in await slot_starts(client, doctor["id"], at(7), at(18))
    assert (await factory.booked(patients[3], doctor["id"], at(10), at(10.5)))["status"] == "confirmed"
    problem(await client.delete(path, headers=doctor.headers), 404)
    no_overlapping_blocked_spans(mysql)


async def test_time_off_that_waited_for_a_decision_cancels_what_it_confirmed_and_says_so_after_it(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, settings: Settings, stack: dict,
) -> None:
    """A booking decided while the time off waits for the doctor's lock is confirmed first and then cancelled by
    it: the rows must say so in that order (cancelled_at not before created_at)."""
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.weekly_hours(doctor, ALL_WEEK)
    with doctor_row_locked(settings, doctor["id"]):
        [request_id] = accepted_ids([await factory.book(patient, doctor["id"], at(10), at(10.5))])
        await until_waiting(mysql, settings, 1)  # the worker's decision, first in line
        time_off = asyncio.create_task(client.post("/doctors/me/time-off", headers=doctor.headers, json={
            "start_time": iso(at(9)), "end_time": iso(at(12)), "reason": "Flu", "cancel_appointments": True}))
        await until_waiting(mysql, settings, 2)
    response = await time_off
    assert response.status_code == 201, response.text
    request = await decided(client, patient, request_id)
    assert request["status"] == "confirmed"
    assert response.json()["cancelled_appointment_ids"] == [request["appointment_id"]]
    [appointment] = rows(mysql, "SELECT * FROM appointments")
    [stored] = rows(mysql, "SELECT * FROM time_off")
    assert (appointment["status"], appointment["cancel_reason"]) == ("cancelled", "Flu")
    assert appointment["created_at"] <= appointment["cancelled_at"] == stored["created_at"]


# --- 3. appointment types ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["unknown", "inactive", "another doctor's"])
async def test_a_type_that_is_not_the_doctors_active_one_is_a_404_naming_it_and_stores_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, which: str,
) -> None:
    doctor, other_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    inactive = await factory.appointment_type(doctor)
    assert (await client.delete(f"/doctors/me/appointment-types/{inactive['id']}",
                                headers=doctor.headers)).status_code == 204
    theirs = await factory.appointment_type(other_doctor)
    type_id = {"unknown": NOWHERE, "inactive": inactive["id"], "another doctor's": theirs["id"]}[which]
    await refused(mysql, book(client, patient, doctor["id"], at(10), type_id=type_id), 404, "appointment_type_id")
    await refused(mysql, client.get(f"/doctors/{doctor['id']}/slots", params={"appointment_type_id": type_id}), 404,
                  "appointment_type_id")


@pytest.mark.parametrize(("params", "field"), [
    ({"appointment_type_id": "0"}, "appointment_type_id"),
    ({"appointment_type_id": "first"}, "appointment_type_id"),
    ({"appointment_type_id": "1.0"}, "appointment_type_id"),
    ({"appointment_type_id": "1", "duration": "30"}, "duration"),
])
async def test_slots_refuse_a_type_id_that_is_no_id_or_comes_with_a_duration(
    client: httpx.AsyncClient, factory: Factory, params: dict[str, str], field: str,
) -> None:
    doctor = await factory.doctor()
    problem(await client.get(f"/doctors/{doctor['id']}/slots", params=params), 400, field)


@pytest.mark.parametrize(("body", "field"), [
    ({"appointment_type_id": 0}, "appointment_type_id"),
    ({"appointment_type_id": "1"}, "appointment_type_id"),
    ({"appointment_type_id": 1.0}, "appointment_type_id"),
    ({"end_time": "same"}, "end_time"),  # both an end and a type
    ({"appointment_type_id": None}, "end_time"),  # neither
])
async def test_a_booking_by_type_names_what_is_wrong_and_stores_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, body: dict[str, Any], field: str,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    kind = await factory.appointment_type(doctor)
    valid = {"doctor_id": doctor["id"], "appointment_type_id": kind["id"], "start_time": iso(at(10))}
    sent = {**valid, **body}
    if body.get("end_time") == "same":
        sent["end_time"] = iso(at(10.5))
    await refused(mysql, client.post("/appointments", json=sent, headers=patient.headers), 400, field)


async def test_a_deactivated_type_disappears_but_its_appointments_keep_it(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    kept = await factory.appointment_type(doctor, name="Check-up")
    retired = await factory.appointment_type(doctor, name="First visit", duration_minutes=45,
                                             buffer_after_minutes=15)
    booked = await book(client, patient, doctor["id"], at(10), type_id=retired["id"])
    assert booked.status_code == 201, booked.text
    appointment = booked.json()

    assert (await client.delete(f"/doctors/me/appointment-types/{retired['id']}",
                                headers=doctor.headers)).status_code == 204
    listed = await client.get(f"/doctors/{doctor['id']}/appointment-types")
    assert [t["id"] for t in listed.json()] == [kept["id"]]
    seen = await client.get(f"/appointments/{appointment['id']}", headers=patient.headers)
    assert (seen.json()["appointment_type_id"], seen.json()["status"]) == (retired["id"], "confirmed")
    [row] = rows(mysql, "SELECT * FROM appointments")
    assert (row["appointment_type_id"], row["end_time"], row["buffer_after_minutes"]) == (
        retired["id"], naive(at(10.75)), 15)
    [type_row] = rows(mysql, "SELECT active FROM appointment_types WHERE id = %s", retired["id"])
    assert not type_row["active"]
    # Its buffer still holds the time after it; the type itself can no longer be booked or changed.
    assert outcome(await factory.book(other, doctor["id"], at(10.75), at(11), wait=10)) == ("rejected", SLOT_TAKEN)
    problem(await book(client, other, doctor["id"], at(12), type_id=retired["id"]), 404, "appointment_type_id")
    problem(await client.patch(f"/doctors/me/appointment-types/{retired['id']}", json={"name": "Back"},
                               headers=doctor.headers), 409)


async def test_changing_a_type_changes_the_rules_of_later_bookings_only(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    patients = [await factory.patient() for _ in range(5)]
    await factory.window(doctor, at(9), at(17))
    kind = await factory.appointment_type(doctor, duration_minutes=30)
    path = f"/doctors/me/appointment-types/{kind['id']}"
    assert outcome(await book(client, patients[0], doctor["id"], at(10), type_id=kind["id"])) == ("confirmed", None)

    changed = await client.patch(path, json={"buffer_before_minutes": 30, "duration_minutes": 45},
                                 headers=doctor.headers)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["buffer_before_minutes"], changed.json()["duration_minutes"]) == (30, 45)
    # Now 45 minutes with half an hour before, on the window's 45-minute grid: 09:45 and 10:30 would need some of
    # 10:00-10:30, taken by the first appointment.
    offered = await slot_starts(client, doctor["id"], at(9), at(17), appointment_type_id=kind["id"])
    assert offered == [at(9), *(at(9) + k * minutes(45) for k in range(3, 10))]
    assert outcome(await book(client, patients[1], doctor["id"], at(10.5), type_id=kind["id"])) == (
        "rejected", SLOT_TAKEN)
    assert outcome(await book(client, patients[2], doctor["id"], at(13), type_id=kind["id"])) == ("confirmed", None)
    # The first appointment keeps its own length and (no) buffers: a plain booking right after it still fits.
    assert outcome(await factory.book(patients[3], doctor["id"], at(10.5), at(10.75), wait=10)) == (
        "confirmed", None)
    stored = rows(mysql, "SELECT start_time, end_time, buffer_before_minutes AS b FROM appointments"
                         " WHERE appointment_type_id = %s ORDER BY start_time", kind["id"])
    assert [(r["start_time"], r["end_time"], r["b"]) for r in stored] == [
        (naive(at(10)), naive(at(10.5)), 0), (naive(at(13)), naive(at(13.75)), 30)]

    # Notice and horizon too: a horizon of one day puts day 2 out of reach.
    assert (await client.patch(path, json={"max_days_ahead": 1}, headers=doctor.headers)).status_code == 200
    assert await slot_starts(client, doctor["id"], at(9), at(17), appointment_type_id=kind["id"]) == []
    assert outcome(await book(client, patients[4], doctor["id"], at(15), type_id=kind["id"])) == (
        "rejected", TOO_FAR_AHEAD)
    assert (await client.patch(path, json={"max_days_ahead": 30, "min_notice_minutes": 7 * 24 * 60},
                               headers=doctor.headers)).status_code == 200
    assert await slot_starts(client, doctor["id"], at(9), at(17), appointment_type_id=kind["id"]) == []
    assert outcome(await book(client, patients[4], doctor["id"], at(15), type_id=kind["id"])) == (
        "rejected", TOO_SOON)


async def test_each_api_process_stores_bookings_by_a_types_current_length_after_a_change_in_another(
    clients: list[httpx.AsyncClient], factory: Factory, mysql: pymysql.Connection,
) -> None:
    """An API process keeps the types bookings name (core/schedule.py's BookableTypes): a change of length, or a
    deactivation, made through the other process reaches its next bookings within moments, not at its TTL."""
    changing_api, booking_api = clients
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    kind = await factory.appointment_type(doctor, duration_minutes=30)
    path = f"/doctors/me/appointment-types/{kind['id']}"
    starts = iter(at(9) + k * minutes(30) for k in range(200))

    async def stored_length() -> timedelta:
        [request_id] = accepted_ids([await book(booking_api, patient, doctor["id"], next(starts), type_id=kind["id"],
                                                wait=0)])
        [row] = rows(mysql, "SELECT start_time, end_time FROM booking_requests WHERE id = %s", request_id)
        return row["end_time"] - row["start_time"]

    assert await stored_length() == minutes(30)
    assert await stored_length() == minutes(30)  # from this process's copy now
    changed = await changing_api.patch(path, json={"duration_minutes": 45}, headers=doctor.headers)
    assert changed.status_code == 200, changed.text
    for _ in range(50):  # by pub/sub, a moment after the commit
        if (length := await stored_length()) == minutes(45):
            break
        await asyncio.sleep(0.02)
    assert length == minutes(45)
    assert (await changing_api.delete(path, headers=doctor.headers)).status_code == 204
    for _ in range(50):
        refused = await book(booking_api, patient, doctor["id"], next(starts), type_id=kind["id"], wait=0)
        if refused.status_code == 404:
            break
        await asyncio.sleep(0.02)
    problem(refused, 404, "appointment_type_id")


async def test_a_type_deactivated_between_request_and_decision_is_refused_by_the_decision(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, settings: Settings, stack: dict,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    kind = await factory.appointment_type(doctor)
    with doctor_row_locked(settings, doctor["id"]):
        deactivating = asyncio.create_task(client.delete(f"/doctors/me/appointment-types/{kind['id']}",
                                                         headers=doctor.headers))
        await until_waiting(mysql, settings, 1)  # the deactivation, first in line
        [request_id] = accepted_ids([await book(client, patient, doctor["id"], at(10), type_id=kind["id"], wait=0)])
        await until_waiting(mysql, settings, 2)  # the worker's decision, behind it
    assert (await deactivating).status_code == 204
    request = await decided(client, patient, request_id)
    assert (request["status"], request["reason"]) == ("rejected", TYPE_UNAVAILABLE)
    assert rows(mysql, "SELECT id FROM appointments") == []


# --- 4. schedule changes racing bookings: two API processes, three workers -----------------------------------------

async def test_time_off_racing_bookings_leaves_no_confirmed_appointment_inside_it(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    """Eight rounds, each a time off over twelve bookings in flight. Inside it, a booking is either confirmed
    before the time off (and then cancelled by it, with its reason) or rejected after it; never kept."""
    doctor = await factory.doctor()
    await factory.weekly_hours(doctor, ALL_WEEK)
    patients = [await factory.patient() for _ in range(14)]
    outcomes: Counter = Counter()
    for round_ in range(8):
        off_start, off_end = at(9, offset=2 + round_), at(12, offset=2 + round_)
        inside = [off_start + k * minutes(15) for k in range(12)]
        starts = [*inside, off_end, off_end + minutes(15)]  # the last two outside it
        reason = f"round {round_}"
        ask_first = round_ % 2 == 1  # odd rounds ask without cancelling first, and cancel after a 409

        async def take_time_off(round_: int = round_, reason: str = reason, ask_first: bool = ask_first,
                                start: datetime = off_start, end: datetime = off_end) -> tuple[dict, list[int]]:
            await asyncio.sleep(0.002 * round_)  # lands somewhere else in the stream of bookings each round
            body = {"start_time": iso(start), "end_time": iso(end), "reason": reason}
            listed: list[int] = []
            if ask_first:
                first = await clients[1].post("/doctors/me/time-off", json=body, headers=doctor.headers)
                if first.status_code == 201:
                    return first.json(), listed
                listed = [a["id"] for a in problem(first, 409)["appointments"]]
            second = await clients[1].post("/doctors/me/time-off", json={**body, "cancel_appointments": True},
                                           headers=doctor.headers)
            assert second.status_code == 201, second.text
            return second.json(), listed

        submitted, (time_off, listed) = await asyncio.gather(
            asyncio.gather(*(later(0.001 * i, book(clients[i % 2], patients[i], doctor["id"], start,
                                                   end=start + minutes(15), wait=0))
                             for i, start in enumerate(starts))),
            take_time_off())
        request_ids = accepted_ids(list(submitted))
        await asyncio.gather(*(decided(clients[i % 2], patients[i], r) for i, r in enumerate(request_ids)))

        [off] = rows(mysql, "SELECT * FROM time_off WHERE id = %s", time_off["id"])
        found = rows(mysql, """
            SELECT br.start_time, br.status, br.reason, br.decided_at, a.id AS appointment_id, a.status AS now,
                   a.created_at, a.cancelled_at, a.cancelled_by, a.cancel_reason
            FROM booking_requests br LEFT JOIN appointments a ON a.booking_request_id = br.id
            WHERE br.id IN %s""", request_ids)
        cancelled = set()
        for r in found:
            if r["start_time"] >= naive(off_end):
                assert (r["status"], r["now"]) == ("confirmed", "confirmed"), r
            elif r["status"] == "confirmed":  # decided first, then swept away by the time off
                assert (r["now"], r["cancel_reason"], r["cancelled_by"]) == ("cancelled", reason, doctor["id"]), r
                assert r["created_at"] <= r["cancelled_at"] == off["created_at"], r
                cancelled.add(r["appointment_id"])
            else:  # decided after it
                assert (r["status"], r["reason"]) == ("rejected", OUTSIDE_AVAILABILITY), r
                assert r["decided_at"] >= off["created_at"], r
        assert set(time_off["cancelled_appointment_ids"]) == cancelled >= set(listed)
        outcomes.update(("cancelled" if r["appointment_id"] in cancelled else r["status"]) for r in found
                        if r["start_time"] < naive(off_end))

    assert rows(mysql, """
        SELECT a.id FROM appointments a JOIN time_off t
          ON t.doctor_id = a.doctor_id AND a.start_time < t.end_time AND t.start_time < a.end_time
        WHERE a.status = 'confirmed'""") == []
    assert sum(outcomes.values()) == 8 * 12
    no_overlapping_confirmed(mysql)


@pytest.mark.parametrize("change", ["close", "open"])
async def test_weekly_hours_changed_while_patients_book_the_day(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection, change: str,
) -> None:
    """Three rounds, each a day's hours removed (or added) while 20 patients book that day: every booking is
    decided by the hours in force at its decision, so those confirmed (and kept) were all decided before the change
    and those refused after it ("open": the other way round)."""
    doctor = await factory.doctor()
    patients = [await factory.patient() for _ in range(22)]
    days = [day(3 + round_) for round_ in range(3)]
    open_days = set(range(1, 8)) - ({d.isoweekday() for d in days} if change == "open" else set())
    await factory.weekly_hours(doctor, [(d, "08:00", "16:00") for d in sorted(open_days)])
    for the_day in days:
        starts = [the_day + timedelta(hours=8) + k * minutes(20) for k in range(22)]
        before, after = ("confirmed", "rejected") if change == "close" else ("rejected", "confirmed")
        first = await book(clients[0], patients[0], doctor["id"], starts[0], end=starts[0] + minutes(20))
        assert outcome(first)[0] == before

        async def change_hours(the_day: datetime = the_day) -> tuple[datetime, datetime]:
            await asyncio.sleep(0.01)
            open_days.symmetric_difference_update({the_day.isoweekday()})
            sent = datetime.now(UTC)
            changed = await clients[1].put("/doctors/me/weekly-hours", headers=doctor.headers, json={
                "hours": [{"weekday": d, "start": "08:00", "end": "16:00"} for d in sorted(open_days)]})
            assert changed.status_code == 200, changed.text
            return naive(sent), naive(datetime.now(UTC))

        submitted, (sent, answered) = await asyncio.gather(
            asyncio.gather(*(book(clients[i % 2], patients[i], doctor["id"], starts[i], end=starts[i] + minutes(20),
                                  wait=0) for i in range(1, 21))),
            change_hours())
        request_ids = accepted_ids(list(submitted))
        last = await book(clients[0], patients[21], doctor["id"], starts[21], end=starts[21] + minutes(20))
        assert outcome(last)[0] == after
        await asyncio.gather(*(decided(clients[i % 2], patients[i + 1], r) for i, r in enumerate(request_ids)))

        found = rows(mysql, """
            SELECT br.status, br.reason, br.decided_at, a.status AS now
            FROM booking_requests br LEFT JOIN appointments a ON a.booking_request_id = br.id
            WHERE br.doctor_id = %s AND br.start_time >= %s AND br.start_time < %s""",
                     doctor["id"], naive(the_day), naive(the_day + timedelta(days=1)))
        assert len(found) == 22
        assert {(r["status"], r["reason"]) for r in found} <= {("confirmed", None),
                                                               ("rejected", OUTSIDE_AVAILABILITY)}
        assert all(r["now"] == "confirmed" for r in found if r["status"] == "confirmed")  # kept
        decided_before = [r["decided_at"] for r in found if r["status"] == before]
        decided_after = [r["decided_at"] for r in found if r["status"] == after]
        assert max(decided_before) <= min(decided_after)
        assert max(decided_before) <= answered and min(decided_after) >= sent
        later = await slot_starts(clients[1], doctor["id"], the_day, the_day + timedelta(days=1))
        assert bool(later) == (change == "open")
    no_overlapping_confirmed(mysql)


async def test_buffers_grown_while_patients_book_never_leave_two_blocked_spans_overlapping(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    """Two rounds, each the type's buffers grown while 20 patients book back-to-back slots that only the old
    buffers allow: each appointment carries the buffers of its decision, and no two blocked spans overlap."""
    doctor = await factory.doctor()
    patients = [await factory.patient() for _ in range(22)]
    kind = await factory.appointment_type(doctor, duration_minutes=30)
    path = f"/doctors/me/appointment-types/{kind['id']}"
    for round_, (old, new) in enumerate([((0, 0), (15, 15)), ((15, 15), (30, 45))]):
        the_day = day(2 + round_)
        await factory.window(doctor, the_day, the_day + timedelta(hours=24))
        step = minutes(30 + sum(old))  # blocked spans that touch under the old buffers
        starts = [the_day + timedelta(hours=1) + k * step for k in range(22)]
        assert outcome(await book(clients[0], patients[0], doctor["id"], starts[0], type_id=kind["id"])) == (
            "confirmed", None)

        async def grow(new: tuple[int, int] = new) -> tuple[datetime, datetime]:
            await asyncio.sleep(0.01)
            sent = datetime.now(UTC)
            changed = await clients[1].patch(path, headers=doctor.headers, json={
                "buffer_before_minutes": new[0], "buffer_after_minutes": new[1]})
            assert changed.status_code == 200, changed.text
            return naive(sent), naive(datetime.now(UTC))

        submitted, (sent, answered) = await asyncio.gather(
            asyncio.gather(*(book(clients[i % 2], patients[i], doctor["id"], starts[i], type_id=kind["id"], wait=0)
                             for i in range(1, 21))),
            grow())
        request_ids = accepted_ids(list(submitted))
        last = the_day + timedelta(hours=23, minutes=30)  # clear of every other, with any of these buffers
        assert outcome(await book(clients[0], patients[21], doctor["id"], last, type_id=kind["id"])) == (
            "confirmed", None)
        await asyncio.gather(*(decided(clients[i % 2], patients[i + 1], r) for i, r in enumerate(request_ids)))

        found = rows(mysql, """
            SELECT br.status, br.reason, a.created_at, a.buffer_before_minutes AS b, a.buffer_after_minutes AS a
            FROM booking_requests br LEFT JOIN appointments a ON a.booking_request_id = br.id
            WHERE br.doctor_id = %s AND br.start_time >= %s AND br.start_time < %s""",
                     doctor["id"], naive(the_day), naive(the_day + timedelta(days=1)))
        assert {(r["status"], r["reason"]) for r in found} <= {("confirmed", None), ("rejected", SLOT_TAKEN)}
        confirmed = [r for r in found if r["status"] == "confirmed"]
        assert {(r["b"], r["a"]) for r in confirmed} <= {old, new}
        with_old = [r["created_at"] for r in confirmed if (r["b"], r["a"]) == old]
        with_new = [r["created_at"] for r in confirmed if (r["b"], r["a"]) == new]
        assert with_old and with_new  # the first booking and the last one
        assert max(with_old) <= min(with_new)
        assert max(with_old) <= answered and min(with_new) >= sent
        no_overlapping_blocked_spans(mysql)
    no_overlapping_confirmed(mysql)


async def test_a_worker_killed_before_committing_a_typed_decision_leaves_nothing_and_the_rerun_decides_right(
    rig: Rig,
) -> None:
    api = rig.api()  # and no worker yet: the five requests wait, and one job decides them in one transaction
    async with rig.client(api) as (http, factory):
        doctor = await factory.doctor()
        patients = [await factory.patient() for _ in range(5)]
        await factory.window(doctor, at(8), at(13))
        kind = await factory.appointment_type(doctor, duration_minutes=30, buffer_before_minutes=15,
                                              buffer_after_minutes=10)
        # 10:00 blocks 09:45-10:40; 10:35 and 09:10 reach into it, 10:55 and 09:05 just touch it.
        starts = [at(10), at(10) + minutes(35), at(10) + minutes(55), at(9) + minutes(5), at(9) + minutes(10)]
        accepted = accepted_ids([await book(http, p, doctor["id"], s, type_id=kind["id"], wait=0)
                                 for p, s in zip(patients, starts, strict=True)])

    doomed = rig.worker(FAULT_POINT="before_commit")
    await until(lambda: doomed.poll() is not None, "the worker to die at the fault point")
    assert doomed.returncode == -signal.SIGKILL
    assert [r["status"] for r in rig.rows("SELECT status FROM booking_requests")] == ["pending"] * 5
    assert rig.rows("SELECT id FROM appointments") == []  # its inserts were rolled back

    rig.worker()
    assert await settle(rig, accepted) == {("confirmed", None): 3, ("rejected", SLOT_TAKEN): 2}
    stored = rig.rows("SELECT booking_request_id, start_time, end_time, appointment_type_id, buffer_before_minutes,"
                      " buffer_after_minutes FROM appointments ORDER BY start_time")
    assert [tuple(r.values()) for r in stored] == [
        (accepted[i], naive(starts[i]), naive(starts[i] + minutes(30)), kind["id"], 15, 10) for i in (3, 0, 2)]
    no_overlapping_blocked_spans(rig.mysql)


# --- 5. bad input: a 400 naming the field, and nothing stored ------------------------------------------------------

@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "europe/berlin", "", "UTC ", "../../etc/passwd", "+02:00"])
async def test_an_unknown_time_zone_is_refused_at_registration_and_patch(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, zone: str,
) -> None:
    doctor = await factory.doctor(timezone="Europe/Berlin")
    await refused(mysql, client.post("/auth/register", json={
        "email": "zone@clinic.example", "name": "Dr Zone", "role": "Doctor", "password": "correct horse battery",
        "timezone": zone}), 400, "timezone")
    await refused(mysql, client.patch("/doctors/me", json={"timezone": zone}, headers=doctor.headers), 400,
                  "timezone")
    assert (await client.get(f"/doctors/{doctor['id']}/weekly-hours")).json()["timezone"] == "Europe/Berlin"


def hours(*intervals: tuple[Any, Any, Any]) -> dict[str, Any]:
    return {"hours": [{"weekday": d, "start": s, "end": e} for d, s, e in intervals]}


@pytest.mark.parametrize(("body", "field"), [
    (hours((1, "25:00", "26:00")), "hours[0].start"),
    (hours((1, "09:60", "10:00")), "hours[0].start"),
    (hours((1, "09:07", "10:00")), "hours[0].start"),
    (hours((1, "09:00", "10:03")), "hours[0].end"),
    (hours((1, "24:00", "24:00")), "hours[0].start"),
    (hours((1, "9:00", "10:00")), "hours[0].start"),
    (hours((1, "09:00 ", "10:00")), "hours[0].start"),
    (hours((1, "0٩:00", "10:00")), "hours[0].start"),  # an Arabic-Indic nine is a digit to \d and to int()
    (hours((1, "09:00", "1٠:00")), "hours[0].end"),
    (hours((1, "09:00", "10:00"), (0, "09:00", "10:00")), "hours[1].weekday"),
    (hours((8, "09:00", "10:00")), "hours[0].weekday"),
    (hours(("1", "09:00", "10:00")), "hours[0].weekday"),
    (hours((1.0, "09:00", "10:00")), "hours[0].weekday"),
    (hours((True, "09:00", "10:00")), "hours[0].weekday"),
    (hours((1, 900, "10:00")), "hours[0].start"),
    (hours((1, "10:00", "10:00")), "hours[0].end"),
    (hours((1, "10:00", "09:00")), "hours[0].end"),
    (hours((1, "10:00", "00:00")), "hours[0].end"),
    (hours((1, "09:00", "12:00"), (2, "09:00", "12:00"), (1, "11:55", "13:00")), "hours[2]"),
    (hours((3, "12:00", "13:00"), (3, "08:00", "12:05")), "hours[0]"),
    (hours(*[(1 + i % 7, f"{i // 7:02d}:00", f"{i // 7:02d}:30") for i in range(101)]), "hours"),
    ({"hours": None}, "hours"),
    ({}, "hours"),
    ({"hours": [], "timezone": "UTC"}, "timezone"),
], ids=lambda value: None if isinstance(value, str) else str(value)[:60])
async def test_bad_weekly_hours_are_a_400_naming_the_interval_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, body: dict[str, Any], field: str,
) -> None:
    doctor = await factory.doctor()
    await factory.weekly_hours(doctor, [(1, "08:00", "12:00"), (5, "13:00", "24:00")])
    await refused(mysql, client.put("/doctors/me/weekly-hours", json=body, headers=doctor.headers), 400, field)


async def test_weekly_hours_take_100_intervals_and_10000_are_refused_whole(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    hundred = [(1 + i % 7, f"{i // 7:02d}:00", f"{i // 7:02d}:30") for i in range(100)]
    assert len((await factory.weekly_hours(doctor, hundred))["hours"]) == 100
    many = hours(*[(1 + i % 7, "09:00", "10:00") for i in range(10_000)])
    # 10,000 intervals are ~430 KB: past the 64 KiB any body may have, refused before it is read.
    await refused(mysql, client.put("/doctors/me/weekly-hours", json=many, headers=doctor.headers), 413)
    touching = await factory.weekly_hours(doctor, [(2, "09:00", "12:00"), (2, "12:00", "24:00"), (2, "00:00", "09:00")])
    assert touching == {"timezone": "UTC", "hours": [{"weekday": 2, "start": s, "end": e} for s, e in
                                                     (("00:00", "09:00"), ("09:00", "12:00"), ("12:00", "24:00"))]}


@pytest.mark.parametrize(("params", "field"), [
    ({"from": at(0), "to": at(0) + timedelta(days=62, minutes=5)}, "to"),
    ({"from": at(0), "to": at(0) + timedelta(days=10_000)}, "to"),
    ({"from": datetime(1, 1, 1, tzinfo=UTC), "to": datetime(9999, 12, 31, tzinfo=UTC)}, "to"),
    ({"from": at(1), "to": at(0)}, "to"),
])
@pytest.mark.parametrize("kind", ["duration", "type"])
async def test_slot_reads_over_more_than_62_days_are_a_400(
    client: httpx.AsyncClient, factory: Factory, params: dict[str, datetime], field: str, kind: str,
) -> None:
    doctor = await factory.doctor()
    extra = {"duration": 30} if kind == "duration" else {
        "appointment_type_id": (await factory.appointment_type(doctor))["id"]}
    query = {name: iso(value) for name, value in params.items()} | extra
    problem(await client.get(f"/doctors/{doctor['id']}/slots", params=query), 400, field)
    problem(await client.get(f"/doctors/{doctor['id']}/availability", params={
        name: iso(value) for name, value in params.items()}), 400, field)
    exactly = {"from": iso(at(0)), "to": iso(at(0) + timedelta(days=62))} | extra
    assert (await client.get(f"/doctors/{doctor['id']}/slots", params=exactly)).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"end_time": at(10) + timedelta(days=366, minutes=5)}, "end_time"),
    ({"start_time": at(0, offset=-2), "end_time": at(0, offset=-1)}, "end_time"),  # over already
    ({"start_time": at(10) + minutes(7)}, "start_time"),
    ({"end_time": at(12) + timedelta(seconds=30)}, "end_time"),
    ({"end_time": at(0)}, "end_time"),  # before it starts
    ({"end_time": at(10)}, "end_time"),  # empty
    ({"start_time": "tomorrow"}, "start_time"),
    ({"start_time": 1_900_000_000}, "start_time"),
    ({"reason": "x" * 501}, "reason"),
    ({"cancel_appointments": "yes"}, "cancel_appointments"),
    ({"cancel_appointments": 1}, "cancel_appointments"),
    ({"until": "later"}, "until"),
])
async def test_bad_time_off_is_a_400_naming_the_field_and_stores_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, body: dict[str, Any], field: str,
) -> None:
    doctor = await factory.doctor()
    valid = {"start_time": at(10), "end_time": at(12), "reason": "Away"}
    sent = {name: iso(value) if isinstance(value, datetime) else value for name, value in (valid | body).items()}
    await refused(mysql, client.post("/doctors/me/time-off", json=sent, headers=doctor.headers), 400, field)


async def test_time_off_of_exactly_366_days_is_taken(client: httpx.AsyncClient, factory: Factory) -> None:
    doctor = await factory.doctor()
    taken = await factory.time_off(doctor, at(0), at(0) + timedelta(days=366))
    assert taken["end_time"] == iso(at(0) + timedelta(days=366))


TYPE_FIELDS_OUT_OF_BOUNDS = [
    ("duration_minutes", 0), ("duration_minutes", 4), ("duration_minutes", 7), ("duration_minutes", 481),
    ("duration_minutes", 485), ("duration_minutes", -5), ("duration_minutes", "30"), ("duration_minutes", 30.0),
    ("duration_minutes", True), ("duration_minutes", None), ("duration_minutes", 10**30),
    ("buffer_before_minutes", -5), ("buffer_before_minutes", 3), ("buffer_before_minutes", 245),
    ("buffer_before_minutes", "15"), ("buffer_after_minutes", 241), ("buffer_after_minutes", 12),
    ("buffer_after_minutes", 15.5), ("min_notice_minutes", -1), ("min_notice_minutes", 43_201),
    ("min_notice_minutes", "60"), ("max_days_ahead", 0), ("max_days_ahead", 731), ("max_days_ahead", "30"),
    ("max_days_ahead", 1.5), ("name", ""), ("name", "   "), ("name", "x" * 101), ("name", 5), ("active", False),
]


@pytest.mark.parametrize(("field", "value"), TYPE_FIELDS_OUT_OF_BOUNDS)
async def test_bad_appointment_type_fields_are_a_400_naming_them_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, field: str, value: Any,
) -> None:
    doctor = await factory.doctor()
    kind = await factory.appointment_type(doctor)
    created = {"name": "Visit", "duration_minutes": 30, field: value}
    await refused(mysql, client.post("/doctors/me/appointment-types", json=created, headers=doctor.headers), 400,
                  field)
    await refused(mysql, client.patch(f"/doctors/me/appointment-types/{kind['id']}", json={field: value},
                                      headers=doctor.headers), 400, field)


async def test_appointment_type_bounds_are_inclusive(client: httpx.AsyncClient, factory: Factory) -> None:
    doctor = await factory.doctor()
    for bounds in ({"duration_minutes": 5, "buffer_before_minutes": 0, "buffer_after_minutes": 0,
                    "min_notice_minutes": 0, "max_days_ahead": 1},
                   {"duration_minutes": 480, "buffer_before_minutes": 240, "buffer_after_minutes": 240,
                    "min_notice_minutes": 43_200, "max_days_ahead": 730}):
        made = await factory.appointment_type(doctor, **bounds)
        assert {name: made[name] for name in bounds} == bounds


# --- 6. who may do what --------------------------------------------------------------------------------------------

async def test_who_may_use_each_schedule_endpoint(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(17))
    kind = await factory.appointment_type(doctor)
    time_off = await factory.time_off(doctor, at(12), at(13))
    doctors_writes = [
        ("PUT", "/doctors/me/weekly-hours", hours((1, "09:00", "12:00"))),
        ("PATCH", "/doctors/me", {"timezone": "Asia/Tokyo"}),
        ("POST", "/doctors/me/time-off", {"start_time": iso(at(14)), "end_time": iso(at(15))}),
        ("GET", "/doctors/me/time-off", None),
        ("DELETE", f"/doctors/me/time-off/{time_off['id']}", None),
        ("POST", "/doctors/me/appointment-types", {"name": "Mine", "duration_minutes": 30}),
        ("PATCH", f"/doctors/me/appointment-types/{kind['id']}", {"buffer_after_minutes": 60}),
        ("DELETE", f"/doctors/me/appointment-types/{kind['id']}", None),
    ]
    booking = ("POST", "/appointments", {"doctor_id": doctor["id"], "appointment_type_id": kind["id"],
                                         "start_time": iso(at(10))})
    before = snapshot(mysql)

    for method, path, body in [*doctors_writes, booking]:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            refused = await client.request(method, path, json=body, headers=headers)
            problem(refused, 401)
            assert refused.headers["www-authenticate"] == "Bearer"
    for method, path, body in doctors_writes:
        problem(await client.request(method, path, json=body, headers=patient.headers), 403)
    problem(await client.request(*booking[:2], json=booking[2], headers=doctor.headers), 403)
    # Another doctor's time off and types are not theirs to touch: 404, as for ids nobody has.
    for method, path, body in doctors_writes[4:5] + doctors_writes[6:]:
        problem(await client.request(method, path, json=body, headers=other_doctor.headers), 404)
        nobodys = path.rsplit("/", 1)[0] + f"/{NOWHERE}"
        problem(await client.request(method, nobodys, json=body, headers=doctor.headers), 404)
    assert (await client.get("/doctors/me/time-off", headers=other_doctor.headers)).json() == []
    assert snapshot(mysql) == before

    # The reads are public; the doctor's own writes go through.
    for read in ("weekly-hours", "appointment-types"):
        assert (await client.get(f"/doctors/{doctor['id']}/{read}")).status_code == 200
        problem(await client.get(f"/doctors/{patient['id']}/{read}"), 404)
    assert (await client.get(f"/doctors/{doctor['id']}/slots",
                             params={"appointment_type_id": kind["id"]})).status_code == 200
    expected = [200, 200, 201, 200, 204, 201, 200, 204]
    assert [(await client.request(method, path, json=body, headers=doctor.headers)).status_code
            for method, path, body in doctors_writes] == expected
