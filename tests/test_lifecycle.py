"""The appointment lifecycle: atomic reschedule, clinical statuses, the cancellation policy, and the history.

Against the shared stack (two API processes, three workers) and, for the killed worker, a rig of the test's own.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pymysql

from service.core.availability import OUTSIDE_AVAILABILITY, SLOT_TAKEN, Available, DoctorTime, Taken
from service.core.booking import (
    APPOINTMENT_NOT_CONFIRMED,
    RETRIES_EXHAUSTED,
    Moving,
    PendingRequest,
    decide,
    fail_request,
)
from service.core.db import Database
from service.core.settings import Settings
from tests.factory import Factory, User, at, iso
from tests.support import ROOT, Rig, accepted_ids, no_overlapping_confirmed, problem, rows, settle, snapshot, until

MINUTE = timedelta(minutes=1)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def soon(minutes: int) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def on_grid(moment: datetime) -> datetime:
    return moment.replace(minute=moment.minute - moment.minute % 5, second=0, microsecond=0)


async def reschedule(client: httpx.AsyncClient, user: User, appointment_id: int, start: datetime, *,
                     wait: int = 10, **body: Any) -> httpx.Response:
    headers = {**user.headers, **({"Prefer": f"wait={wait}"} if wait else {})}
    return await client.post(f"/appointments/{appointment_id}/reschedule", headers=headers,
                             json={"start_time": iso(start), **body})


async def set_status(client: httpx.AsyncClient, user: User, appointment_id: int, status: str,
                     **body: Any) -> httpx.Response:
    return await client.patch(f"/appointments/{appointment_id}", headers=user.headers,
                              json={"status": status, **body})


async def appointment(client: httpx.AsyncClient, user: User, appointment_id: int) -> dict[str, Any]:
    response = await client.get(f"/appointments/{appointment_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def history_of(client: httpx.AsyncClient, user: User, appointment_id: int) -> list[tuple]:
    response = await client.get(f"/appointments/{appointment_id}/history", headers=user.headers)
    assert response.status_code == 200, response.text
    return [(h["action"], h["actor_role"], h["from_status"], h["to_status"], h["reason"])
            for h in response.json()["items"]]


def started(mysql: pymysql.Connection, appointment_id: int, minutes_ago: int = 10) -> None:
    """Move an appointment's time into the past (keeping its length), as if the day had come: the API books only
    the future, and statuses like `completed` need an appointment that has started."""
    shifted(mysql, appointment_id, soon(-minutes_ago))


def shifted(mysql: pymysql.Connection, appointment_id: int, start: datetime) -> None:
    """Put an appointment at `start` (keeping its length)."""
    with mysql.cursor() as cursor:
        cursor.execute("UPDATE appointments SET end_time = %s + INTERVAL TIMESTAMPDIFF(SECOND, start_time, end_time)"
                       " SECOND, start_time = %s WHERE id = %s", (naive(start), naive(start), appointment_id))


# --- 1. the rule, without a database --------------------------------------------------------------------------

def test_a_reschedule_may_use_its_own_time_and_frees_it_for_the_rest_of_the_batch() -> None:
    nine = datetime(2030, 1, 15, 9)
    doctor = DoctorTime([Available(nine, nine + timedelta(hours=3))], [], {7: (nine, nine + 30 * MINUTE)})
    patients = {1: Taken([], {7: (nine, nine + 30 * MINUTE)}), 2: Taken()}
    requests = [
        PendingRequest(10, 2, nine, nine + 30 * MINUTE, None),  # another patient wants the time still held
        PendingRequest(11, 1, nine + 15 * MINUTE, nine + 45 * MINUTE, None, reschedules=7),  # overlapping itself
        PendingRequest(12, 1, nine + 60 * MINUTE, nine + 90 * MINUTE, None, reschedules=7),  # moved already
        PendingRequest(13, 2, nine, nine + 15 * MINUTE, None),  # freed by request 11
    ]
    moving = {7: Moving(7, 99, "confirmed", nine, nine + 30 * MINUTE, 1)}
    decisions = decide(requests, doctor, patients, nine - timedelta(days=1), {}, moving)
    assert [(d.status, d.reason, d.rescheduled_from) for d in decisions] == [
        ("rejected", SLOT_TAKEN, None), ("confirmed", None, 7), ("rejected", APPOINTMENT_NOT_CONFIRMED, None),
        ("confirmed", None, None)]


def test_a_failed_reschedule_keeps_its_old_time_taken() -> None:
    nine = datetime(2030, 1, 15, 9)
    doctor = DoctorTime([Available(nine, nine + timedelta(hours=1))], [], {7: (nine, nine + 30 * MINUTE)})
    patients = {1: Taken([], {7: (nine, nine + 30 * MINUTE)}), 2: Taken()}
    requests = [PendingRequest(11, 1, nine + 2 * timedelta(hours=1), nine + timedelta(hours=3), None, reschedules=7),
                PendingRequest(12, 2, nine, nine + 30 * MINUTE, None),
                PendingRequest(13, 1, nine, nine + 30 * MINUTE, None)]
    decisions = decide(requests, doctor, patients, nine - timedelta(days=1), {},
                       {7: Moving(7, 99, "confirmed", nine, nine + 30 * MINUTE, 1)})
    assert [(d.status, d.reason) for d in decisions] == [
        ("rejected", OUTSIDE_AVAILABILITY), ("rejected", SLOT_TAKEN), ("rejected", SLOT_TAKEN)]
    # A patient's own moving appointment counts for their other bookings too.
    assert patients[1].clash(nine, nine + MINUTE) is not None
    assert patients[1].clash(nine, nine + MINUTE, 7) is None


# --- 2. reschedule through the API -----------------------------------------------------------------------------

async def test_a_reschedule_moves_the_appointment_atomically_and_links_both(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    old = await factory.booked(patient, doctor["id"], at(9), at(9.5))

    # 15 minutes later, inside its own span: its own time does not stand in its way.
    response = await reschedule(client, patient, old["id"], at(9.25))
    assert response.status_code == 201, response.text
    new = response.json()
    assert (new["status"], new["rescheduled_from"], new["start_time"], new["end_time"]) == (
        "confirmed", old["id"], iso(at(9.25)), iso(at(9.75)))  # it keeps its length
    assert new["fhir_status"] == "booked" and response.headers["location"] == f"/appointments/{new['id']}"
    moved = await appointment(client, patient, old["id"])
    assert (moved["status"], moved["rescheduled_to"], moved["fhir_status"]) == ("rescheduled", new["id"],
                                                                                 "cancelled")
    [request] = rows(mysql, "SELECT kind, reschedules, status FROM booking_requests WHERE id = %s",
                     new["booking_request_id"])
    assert request == {"kind": "reschedule", "reschedules": old["id"], "status": "confirmed"}

    # The old time is free again; the new one is not.
    other = await factory.patient()
    assert (await factory.book(other, doctor["id"], at(9), at(9.25), wait=10)).status_code == 201
    taken = await factory.book(other, doctor["id"], at(9.5), at(10), wait=10)
    assert problem(taken, 409)["reason"] == SLOT_TAKEN
    no_overlapping_confirmed(mysql)

    assert await history_of(client, patient, new["id"]) == [
        ("requested", "Patient", None, "pending", None),
        ("rescheduled", "system", "confirmed", "rescheduled", None),
        ("confirmed", "system", None, "confirmed", None)]
    assert await history_of(client, doctor, old["id"]) == [
        ("requested", "Patient", None, "pending", None),
        ("confirmed", "system", None, "confirmed", None),
        ("requested", "Patient", None, "pending", None),
        ("rescheduled", "system", "confirmed", "rescheduled", None)]


async def test_a_reschedule_locks_no_appointment_but_the_one_it_moves(
    client: httpx.AsyncClient, factory: Factory, settings: Settings,
) -> None:
    """A cancellation holding another appointment's row does not stall a move. The link of the old appointment to
    the new one once joined over appointments and took shared locks on rows it read: with the patient's row locked
    by the decision, a cancellation of that patient's other appointment (whose update checks the patient's row)
    deadlocked with it (seen once in the soak)."""
    doctor, other_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    await factory.window(other_doctor, at(9), at(12))
    old = await factory.booked(patient, doctor["id"], at(9), at(9.5))
    elsewhere = await factory.booked(patient, other_doctor["id"], at(11), at(11.5))
    address = settings.mysql
    holder = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                             database=address.database, autocommit=False)
    try:
        with holder.cursor() as cursor:  # as a cancellation of the other appointment holds it, mid-transaction
            cursor.execute("SELECT id FROM appointments WHERE id = %s FOR UPDATE", (elsewhere["id"],))
        response = await reschedule(client, patient, old["id"], at(10), wait=8)
        assert response.status_code == 201, response.text  # decided meanwhile, not waiting for that row
    finally:
        holder.rollback()
        holder.close()
    moved = await appointment(client, patient, old["id"])
    assert (moved["status"], moved["rescheduled_to"]) == ("rescheduled", response.json()["id"])


async def test_a_reschedule_to_a_taken_time_is_rejected_and_leaves_the_appointment_untouched(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    mine = await factory.booked(patient, doctor["id"], at(9), at(9.5))
    await factory.booked(other, doctor["id"], at(10), at(10.5))
    before = rows(mysql, "SELECT * FROM appointments WHERE id = %s", mine["id"])

    for start, reason in ((at(10.25), SLOT_TAKEN), (at(11.75), OUTSIDE_AVAILABILITY)):
        body = problem(await reschedule(client, patient, mine["id"], start), 409)
        assert body["reason"] == reason and body["booking_request"]["kind"] == "reschedule"
    assert rows(mysql, "SELECT * FROM appointments WHERE id = %s", mine["id"]) == before
    assert [h[0] for h in await history_of(client, patient, mine["id"])] == [
        "requested", "confirmed", "requested", "rejected", "requested", "rejected"]


async def test_a_reschedule_keeps_the_type_and_its_buffers_or_takes_another_doctors_length(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, second_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    for d in (doctor, second_doctor):
        await factory.window(d, at(8), at(16))
    visit = await factory.appointment_type(doctor, duration_minutes=40, buffer_after_minutes=10)
    booked = await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": iso(at(9)), "appointment_type_id": visit["id"]})
    assert booked.status_code == 201, booked.text

    same = (await reschedule(client, patient, booked.json()["id"], at(10))).json()
    assert (same["appointment_type_id"], same["end_time"]) == (visit["id"], iso(at(10) + 40 * MINUTE))
    [row] = rows(mysql, "SELECT buffer_after_minutes FROM appointments WHERE id = %s", same["id"])
    assert row["buffer_after_minutes"] == 10

    moved = await reschedule(client, patient, same["id"], at(13), doctor_id=second_doctor["id"])
    assert moved.status_code == 201, moved.text
    away = moved.json()
    assert (away["doctor_id"], away["appointment_type_id"], away["end_time"]) == (
        second_doctor["id"], None, iso(at(13) + 40 * MINUTE))
    # The first doctor's time is free again, slot reads included (their cache is told).
    slots = await client.get(f"/doctors/{doctor['id']}/slots",
                             params={"from": iso(at(10)), "to": iso(at(11)), "duration": 30})
    assert iso(at(10)) in [s["start_time"] for s in slots.json()["slots"]]
    # Another doctor's type is not this one's.
    assert problem(await reschedule(client, patient, away["id"], at(14), appointment_type_id=visit["id"]),
                   404)["errors"][0]["field"] == "appointment_type_id"


async def test_a_reschedule_is_idempotent_with_its_key(client: httpx.AsyncClient, factory: Factory,
                                                       mysql: pymysql.Connection) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    old = await factory.booked(patient, doctor["id"], at(9), at(9.5))
    key = {"Idempotency-Key": f"move-{old['id']}"}
    first = await client.post(f"/appointments/{old['id']}/reschedule", headers={**patient.headers, **key},
                              json={"start_time": iso(at(10))})
    again = await client.post(f"/appointments/{old['id']}/reschedule", headers={**patient.headers, **key},
                              json={"start_time": iso(at(10))})
    assert first.status_code == again.status_code == 202
    assert first.json()["request_id"] == again.json()["request_id"]
    other_body = await client.post(f"/appointments/{old['id']}/reschedule", headers={**patient.headers, **key},
                                   json={"start_time": iso(at(11))})
    problem(other_body, 409)
    await until(lambda: rows(mysql, "SELECT id FROM appointments WHERE rescheduled_from = %s", old["id"]),
                "the reschedule to be decided")
    assert len(rows(mysql, "SELECT id FROM booking_requests WHERE reschedules = %s", old["id"])) == 1


# --- 3. statuses --------------------------------------------------------------------------------------------------

async def test_statuses_follow_the_allowed_transitions_at_the_allowed_times(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    visit = await factory.booked(patient, doctor["id"], at(9), at(9.5))

    # Too early: check-in opens an hour before the start, completion and no-show at the start.
    for status in ("checked_in", "completed", "no_show"):
        body = problem(await set_status(client, doctor, visit["id"], status), 409)
        assert body["reason"] == "too_early" and body["possible_from"]
    shifted(mysql, visit["id"], soon(50))
    checked_in = await set_status(client, doctor, visit["id"], "checked_in")
    assert (checked_in.status_code, checked_in.json()["status"], checked_in.json()["fhir_status"]) == (
        200, "checked_in", "checked-in")
    again = await set_status(client, doctor, visit["id"], "checked_in")
    assert again.status_code == 200 and again.json()["status_changed_at"] == checked_in.json()["status_changed_at"]
    for status in ("no_show", "cancelled", "confirmed", "rescheduled"):
        body = problem(await set_status(client, doctor, visit["id"], status, reason="x"), 409)
        assert (body["reason"], body["allowed"]) == ("transition_not_allowed", ["completed"]), body
    assert problem(await set_status(client, doctor, visit["id"], "completed"), 409)["reason"] == "too_early"
    started(mysql, visit["id"])
    done = await set_status(client, doctor, visit["id"], "completed")
    assert (done.json()["status"], done.json()["fhir_status"]) == ("completed", "fulfilled")
    for status in ("checked_in", "no_show", "cancelled", "confirmed"):
        body = problem(await set_status(client, doctor, visit["id"], status, reason="x"), 409)
        assert body["allowed"] == [] and "final" in body["detail"]
    # Completed keeps its time: nobody can be booked over it (and it cannot be cancelled).
    problem(await client.delete(f"/appointments/{visit['id']}", headers=patient.headers), 409)

    missed = await factory.booked(patient, doctor["id"], at(10), at(10.5))
    started(mysql, missed["id"], minutes_ago=60)
    assert (await set_status(client, doctor, missed["id"], "no_show")).json()["fhir_status"] == "noshow"
    assert await history_of(client, doctor, visit["id"]) == [
        ("requested", "Patient", None, "pending", None), ("confirmed", "system", None, "confirmed", None),
        ("status_changed", "Doctor", "confirmed", "checked_in", None),
        ("status_changed", "Doctor", "checked_in", "completed", None)]


async def test_a_doctor_sees_each_patients_no_show_count_on_the_schedule(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    reliable, unreliable = await factory.patient(), await factory.patient()
    for d in (doctor, other_doctor):
        await factory.window(d, at(8), at(16))
    missed = [await factory.booked(unreliable, other_doctor["id"], at(8 + k), at(8.5 + k)) for k in range(2)]
    for index, a in enumerate(missed):
        started(mysql, a["id"], minutes_ago=120 + 60 * index)
        assert (await set_status(client, other_doctor, a["id"], "no_show")).status_code == 200
    await factory.booked(unreliable, doctor["id"], at(12), at(12.5))
    await factory.booked(reliable, doctor["id"], at(13), at(13.5))
    schedule = await client.get("/appointments/my-appointments", headers=doctor.headers)
    assert [(a["patient_id"], a["patient_no_shows"]) for a in schedule.json()["items"]] == [
        (unreliable["id"], 2), (reliable["id"], 0)]
    mine = await client.get("/appointments/my-appointments", headers=unreliable.headers)
    assert {a["patient_no_shows"] for a in mine.json()["items"]} == {None}  # the patient's own list does not say


# --- 4. the cancellation policy -------------------------------------------------------------------------------

async def test_a_patient_cannot_cancel_or_move_later_than_the_types_notice_doctors_can(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    start = on_grid(soon(180))  # three hours ahead: inside a day's notice
    await factory.window(doctor, start - timedelta(hours=1), start + timedelta(hours=3))
    strict = await factory.appointment_type(doctor, duration_minutes=30, cancel_notice_minutes=24 * 60)
    assert strict["cancel_notice_minutes"] == 24 * 60
    booked = await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "start_time": iso(start), "appointment_type_id": strict["id"]})
    assert booked.status_code == 201, booked.text
    visit = booked.json()
    before = snapshot(mysql)
    for response in (await client.delete(f"/appointments/{visit['id']}", headers=patient.headers),
                     await reschedule(client, patient, visit["id"], start + timedelta(hours=1))):
        body = problem(response, 409)
        assert body["reason"] == "too_late_to_cancel"
        assert body["cancellable_until"] == iso(start - timedelta(hours=24))
    assert snapshot(mysql) == before
    # The doctor can, with a reason (without one: 400, nothing changed).
    problem(await client.delete(f"/appointments/{visit['id']}", headers=doctor.headers), 400, "reason")
    cancelled = await client.delete(f"/appointments/{visit['id']}", headers=doctor.headers,
                                    params={"reason": "Doctor ill"})
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert (await history_of(client, patient, visit["id"]))[-1] == (
        "cancelled", "Doctor", "confirmed", "cancelled", "Doctor ill")


# --- 5. who may do what ------------------------------------------------------------------------------------------

async def test_every_role_on_every_new_endpoint_gets_its_answer_and_changes_nothing_it_may_not(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    visit = await factory.booked(patient, doctor["id"], at(9), at(9.5))
    path = f"/appointments/{visit['id']}"

    async def refused(response: Any, status: int) -> None:
        before = snapshot(mysql)
        problem(await response, status)
        assert snapshot(mysql) == before

    for outsider in (other_patient, other_doctor):
        await refused(reschedule(client, outsider, visit["id"], at(10)), 403 if outsider is other_doctor else 404)
        await refused(set_status(client, outsider, visit["id"], "checked_in"),
                      404 if outsider is other_doctor else 403)
        await refused(client.get(f"{path}/history", headers=outsider.headers), 404)
        await refused(client.delete(path, headers=outsider.headers, params={"reason": "x"}), 404)
    await refused(reschedule(client, doctor, visit["id"], at(10)), 403)  # the doctor cancels; patients move
    await refused(set_status(client, patient, visit["id"], "checked_in"), 403)
    await refused(client.get(f"{path}/history"), 401)
    # Bad input: 400 naming the field, never a 500.
    await refused(client.patch(path, headers=doctor.headers, json={"status": "done"}), 400)
    await refused(client.patch(path, headers=doctor.headers, json={"status": "checked_in", "extra": 1}), 400)
    await refused(client.post(f"{path}/reschedule", headers=patient.headers, json={"start_time": "soon"}), 400)
    await refused(client.post(f"{path}/reschedule", headers=patient.headers,
                              json={"start_time": iso(at(10) + MINUTE)}), 400)
    await refused(client.post(f"{path}/reschedule", headers=patient.headers,
                              json={"start_time": "9999-12-31T23:55:00Z"}), 400)
    await refused(client.post("/appointments/99999999/reschedule", headers=patient.headers,
                              json={"start_time": iso(at(10))}), 404)
    await refused(client.post(f"{path}/reschedule", headers=patient.headers,
                              json={"start_time": iso(at(10)), "doctor_id": 2**53 - 1}), 404)


async def test_the_front_desk_moves_checks_in_and_cancels_for_any_patient_and_is_recorded(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, desk = await factory.doctor(), await factory.patient(), await factory.staff()
    await factory.window(doctor, at(9), at(12))
    strict = await factory.appointment_type(doctor, duration_minutes=30, cancel_notice_minutes=30 * 24 * 60)
    booked = await client.post("/appointments", headers={**desk.headers, "Prefer": "wait=10"}, json={
        "doctor_id": doctor["id"], "patient_id": patient["id"], "start_time": iso(at(9)),
        "appointment_type_id": strict["id"]})
    assert booked.status_code == 201, booked.text
    visit = booked.json()
    assert visit["patient_id"] == patient["id"]

    # Inside the type's notice the patient cannot move it; the front desk can, and the request keeps who asked.
    assert problem(await reschedule(client, patient, visit["id"], at(10)), 409)["reason"] == "too_late_to_cancel"
    moved = await reschedule(client, desk, visit["id"], at(10))
    assert moved.status_code == 201, moved.text
    new = moved.json()
    [request] = rows(mysql, "SELECT patient_id, requested_by, kind FROM booking_requests WHERE id = %s",
                     new["booking_request_id"])
    assert request == {"patient_id": patient["id"], "requested_by": desk["id"], "kind": "reschedule"}
    status = await client.get(f"/booking-requests/{new['booking_request_id']}", headers=desk.headers)
    assert status.status_code == 200 and status.json()["kind"] == "reschedule"

    shifted(mysql, new["id"], soon(20))
    assert (await set_status(client, desk, new["id"], "checked_in")).json()["status"] == "checked_in"
    second = await factory.booked(patient, doctor["id"], at(11), at(11.5))
    problem(await client.delete(f"/appointments/{second['id']}", headers=desk.headers), 400, "reason")
    cancelled = await client.delete(f"/appointments/{second['id']}", headers=desk.headers,
                                    params={"reason": "Called to cancel"})
    assert (cancelled.status_code, cancelled.json()["cancelled_by"]) == (200, desk["id"])

    assert await history_of(client, desk, new["id"]) == [
        ("requested", "Staff", None, "pending", None), ("rescheduled", "system", "confirmed", "rescheduled", None),
        ("confirmed", "system", None, "confirmed", None),
        ("status_changed", "Staff", "confirmed", "checked_in", None)]
    assert (await history_of(client, patient, second["id"]))[-1] == (
        "cancelled", "Staff", "confirmed", "cancelled", "Called to cancel")
    # The desk has no schedule of its own to list.
    problem(await client.get("/appointments/my-appointments", headers=desk.headers), 403)


# --- 6. races, over two API processes and three workers -----------------------------------------------------------

async def test_a_reschedule_racing_a_booking_of_the_same_time_one_wins_and_the_loser_keeps_its_slot(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    movers = [await factory.patient() for _ in range(8)]
    bookers = [await factory.patient() for _ in range(8)]
    await factory.window(doctor, at(8), at(16))
    outcomes: Counter = Counter()
    for round_, (mover, booker) in enumerate(zip(movers, bookers, strict=True)):
        old = await factory.booked(mover, doctor["id"], at(8 + round_ * 0.5), at(8.25 + round_ * 0.5))
        target = at(12 + round_ * 0.5)
        moved, booked = await asyncio.gather(
            reschedule(clients[round_ % 2], mover, old["id"], target),
            factory.book(booker, doctor["id"], target, target + 15 * MINUTE, wait=10,
                         client=clients[(round_ + 1) % 2]))
        assert sorted([moved.status_code, booked.status_code]) == [201, 409], (moved.text, booked.text)
        outcomes["reschedule" if moved.status_code == 201 else "booking"] += 1
        [still] = rows(mysql, "SELECT status, rescheduled_to FROM appointments WHERE id = %s", old["id"])
        if moved.status_code == 409:  # the loser's old appointment is exactly as it was
            assert still == {"status": "confirmed", "rescheduled_to": None}
        else:
            assert still == {"status": "rescheduled", "rescheduled_to": moved.json()["id"]}
        assert len(rows(mysql, "SELECT id FROM appointments WHERE doctor_id = %s AND start_time = %s"
                               " AND held_start IS NOT NULL", doctor["id"], naive(target))) == 1
    assert sum(outcomes.values()) == 8
    no_overlapping_confirmed(mysql)


async def test_two_reschedules_of_one_appointment_at_once_one_wins(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    doctor, second_doctor, patient = await factory.doctor(), await factory.doctor(), await factory.patient()
    for d in (doctor, second_doctor):
        await factory.window(d, at(8), at(16))
    for round_ in range(6):
        old = await factory.booked(patient, doctor["id"], at(8 + round_ * 0.5), at(8.25 + round_ * 0.5))
        # Same doctor and another one in turns: both batches take the locks of both doctors, in id order.
        elsewhere = {"doctor_id": second_doctor["id"]} if round_ % 2 else {}
        first, second = await asyncio.gather(
            reschedule(clients[0], patient, old["id"], at(12 + round_ * 0.5)),
            reschedule(clients[1], patient, old["id"], at(12.25 + round_ * 0.5), **elsewhere))
        assert sorted([first.status_code, second.status_code]) == [201, 409], (first.text, second.text)
        loser = first if first.status_code == 409 else second
        # Refused by the worker's decision, or, if the winner was decided before the loser reached the API, by the
        # API (the appointment is `rescheduled` already).
        assert loser.json()["reason"] in (APPOINTMENT_NOT_CONFIRMED, "transition_not_allowed")
        assert len(rows(mysql, "SELECT id FROM appointments WHERE rescheduled_from = %s", old["id"])) == 1
    no_overlapping_confirmed(mysql)


async def test_a_reschedule_racing_a_cancellation_ends_consistent_and_recorded(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(8), at(16))
    ends: Counter = Counter()
    for round_ in range(8):
        old = await factory.booked(patient, doctor["id"], at(8 + round_ * 0.5), at(8.25 + round_ * 0.5))
        moved, cancelled = await asyncio.gather(
            reschedule(clients[round_ % 2], patient, old["id"], at(12 + round_ * 0.5)),
            clients[(round_ + 1) % 2].delete(f"/appointments/{old['id']}", headers=patient.headers))
        [now] = rows(mysql, "SELECT status FROM appointments WHERE id = %s", old["id"])
        moves = rows(mysql, "SELECT status FROM appointments WHERE rescheduled_from = %s", old["id"])
        actions = [h["action"] for h in rows(mysql, "SELECT action FROM appointment_history WHERE appointment_id = %s"
                                                    " ORDER BY id", old["id"])]
        if now["status"] == "cancelled":  # the cancellation came first: the move was refused, by the API or the worker
            assert cancelled.status_code == 200 and moved.status_code == 409 and moves == []
            assert moved.json()["reason"] in (APPOINTMENT_NOT_CONFIRMED, "transition_not_allowed")
            assert actions[-1] == ("rejected" if moved.json()["reason"] == APPOINTMENT_NOT_CONFIRMED else "cancelled")
        else:  # the move came first: the cancellation found nothing left to cancel
            assert now["status"] == "rescheduled" and moves == [{"status": "confirmed"}]
            assert moved.status_code == 201 and cancelled.status_code == 409
            assert "cancelled" not in actions and actions[-1] == "rescheduled"
        ends[now["status"]] += 1
    assert sum(ends.values()) == 8
    no_overlapping_confirmed(mysql)


# --- 7. a worker killed in the middle of a reschedule ---------------------------------------------------------------

async def test_a_worker_killed_inside_a_reschedule_leaves_nothing_half_done(rig: Rig) -> None:
    api = rig.api()
    healthy = rig.worker()
    async with rig.client(api) as (http, factory):
        doctor, patient = await factory.doctor(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        old = await factory.booked(patient, doctor["id"], at(9), at(9.5))
        rig.processes.stop(healthy)
        doomed = rig.worker(FAULT_POINT="before_commit")
        [request_id] = accepted_ids([await reschedule(http, patient, old["id"], at(10), wait=0)])

        await until(lambda: doomed.poll() is not None, "the worker to die inside the transaction")
        assert doomed.returncode == -signal.SIGKILL
        assert rig.rows("SELECT status FROM appointments") == [{"status": "confirmed"}]
        assert rig.rows("SELECT status FROM booking_requests WHERE id = %s", request_id) == [{"status": "pending"}]
        # The request is its own record until decided: its `requested` row comes with the decision (core/history.py).
        assert [h["action"] for h in rig.rows("SELECT action FROM appointment_history ORDER BY id")] == [
            "requested", "confirmed"]

        rig.worker()
        assert await settle(rig, [old["booking_request_id"], request_id]) == {("confirmed", None): 2}
        [was, now] = rig.rows("SELECT id, status, rescheduled_from, rescheduled_to FROM appointments ORDER BY id")
        assert was == {"id": old["id"], "status": "rescheduled", "rescheduled_from": None, "rescheduled_to": now["id"]}
        assert (now["status"], now["rescheduled_from"], now["rescheduled_to"]) == ("confirmed", old["id"], None)
        assert [h["action"] for h in rig.rows("SELECT action FROM appointment_history ORDER BY at, id")] == [
            "requested", "confirmed", "requested", "rescheduled", "confirmed"]


async def test_a_request_that_runs_out_of_tries_is_recorded_as_asked_for_then_failed(
    client: httpx.AsyncClient, factory: Factory, db: Database, mysql: pymysql.Connection,
) -> None:
    """The worker's last try gives up (fail_request): the request is failed, and its history says who asked, when,
    and that it failed; a second give-up changes nothing."""
    doctor, patient, desk = await factory.doctor(), await factory.patient(), await factory.staff()
    await factory.window(doctor, at(9), at(12))
    old = await factory.booked(patient, doctor["id"], at(9), at(9.5))
    asked_at = datetime.now(UTC).replace(tzinfo=None)
    with mysql.cursor() as cursor:  # stored as the API stores it, with no job queued: nothing else decides it
        cursor.execute("INSERT INTO booking_requests (patient_id, requested_by, doctor_id, start_time, end_time,"
                       " created_at, kind, reschedules) VALUES (%s, %s, %s, %s, %s, %s, 'reschedule', %s)",
                       (patient["id"], desk["id"], doctor["id"], at(10), at(10.5), asked_at, old["id"]))
        request_id = cursor.lastrowid
    failed = await fail_request(db, request_id)
    assert failed is not None and [(d.request_id, d.status, d.reason) for d in failed.decisions] == [
        (request_id, "failed", RETRIES_EXHAUSTED)]
    assert await fail_request(db, request_id) is None
    assert rows(mysql, "SELECT status, reason FROM booking_requests WHERE id = %s", request_id) == [
        {"status": "failed", "reason": RETRIES_EXHAUSTED}]
    assert rows(mysql, "SELECT at, actor_id, actor_role, action, to_status, reason FROM appointment_history"
                       " WHERE booking_request_id = %s ORDER BY at, id", request_id) == [
        {"at": asked_at, "actor_id": desk["id"], "actor_role": "Staff", "action": "requested",
         "to_status": "pending", "reason": None},
        {"at": failed.decided_at, "actor_id": None, "actor_role": "system", "action": "failed", "to_status": None,
         "reason": RETRIES_EXHAUSTED}]
    assert (await history_of(client, patient, old["id"]))[-2:] == [
        ("requested", "Staff", None, "pending", None), ("failed", "system", None, None, RETRIES_EXHAUSTED)]

    # A request stored before migration 0014 had its `requested` row written with it: its decision adds no other.
    with mysql.cursor() as cursor:
        cursor.execute("INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, created_at,"
                       " requested_in_history) VALUES (%s, %s, %s, %s, %s, TRUE)",
                       (patient["id"], doctor["id"], at(11), at(11.5), asked_at))
        older = cursor.lastrowid
    assert await fail_request(db, older) is not None
    assert [h["action"] for h in rows(mysql, "SELECT action FROM appointment_history WHERE booking_request_id = %s",
                                      older)] == ["failed"]


# --- 8. history ------------------------------------------------------------------------------------------------------

async def test_the_history_of_a_scripted_day_is_complete(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """Book, reschedule, check in, complete; book, no-show; book, cancel."""
    doctor = await factory.doctor()
    anna, ben, cleo = await factory.patient(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(8), at(16))
    first = await factory.booked(anna, doctor["id"], at(8), at(8.5))
    moved = (await reschedule(client, anna, first["id"], at(9))).json()
    shifted(mysql, moved["id"], soon(30))
    assert (await set_status(client, doctor, moved["id"], "checked_in")).status_code == 200
    started(mysql, moved["id"])
    assert (await set_status(client, doctor, moved["id"], "completed", reason="All well")).status_code == 200
    missed = await factory.booked(ben, doctor["id"], at(10), at(10.5))
    started(mysql, missed["id"], minutes_ago=90)
    assert (await set_status(client, doctor, missed["id"], "no_show")).status_code == 200
    dropped = await factory.booked(cleo, doctor["id"], at(11), at(11.5))
    assert (await client.delete(f"/appointments/{dropped['id']}", headers=cleo.headers,
                                params={"reason": "Feeling better"})).status_code == 200

    response = await client.get(f"/appointments/{moved['id']}/history", headers=anna.headers)
    items = response.json()["items"]
    assert [(h["action"], h["actor_id"], h["from_status"], h["to_status"]) for h in items] == [
        ("requested", anna["id"], None, "pending"), ("rescheduled", None, "confirmed", "rescheduled"),
        ("confirmed", None, None, "confirmed"), ("status_changed", doctor["id"], "confirmed", "checked_in"),
        ("status_changed", doctor["id"], "checked_in", "completed")]
    assert items[-1]["reason"] == "All well"
    assert [datetime.fromisoformat(h["at"]) for h in items] == sorted(datetime.fromisoformat(h["at"]) for h in items)
    assert await history_of(client, doctor, missed["id"]) == [
        ("requested", "Patient", None, "pending", None), ("confirmed", "system", None, "confirmed", None),
        ("status_changed", "Doctor", "confirmed", "no_show", None)]
    assert await history_of(client, cleo, dropped["id"]) == [
        ("requested", "Patient", None, "pending", None), ("confirmed", "system", None, "confirmed", None),
        ("cancelled", "Patient", "confirmed", "cancelled", "Feeling better")]


def test_no_code_path_updates_or_deletes_history() -> None:
    """The history is append-only: every SQL statement that names its table inserts into it or reads it, and no
    Python code names it (all SQL lives in sql/)."""
    statements = []
    for path in sorted((ROOT / "sql").glob("*.sql")):
        code = re.sub(r"--[^\n]*", "", path.read_text())
        statements += [s.strip() for s in code.split(";") if "appointment_history" in s]
    assert statements and all(re.match(r"(INSERT INTO|SELECT)\b", s) for s in statements), statements
    assert not [s for s in statements if re.search(r"\b(UPDATE|DELETE|TRUNCATE|REPLACE|DROP|ALTER)\b", s, re.I)]
    named = [path for folder in ("service", "worker") for path in (ROOT / folder).rglob("*.py")
             if "appointment_history" in path.read_text()]
    assert named == []
