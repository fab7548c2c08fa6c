"""Slot holds: decided through the booking queue like bookings, so a slot is never held by two people nor held by
one and booked by another; confirmed within their lifetime, always; free again after it, with nobody acting.

Against the shared stack (two API processes, three workers) and, where the lifetime must run out for real or no
worker may run for a while, a rig of the test's own.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pymysql

from service.core.availability import SLOT_TAKEN, Available, DoctorTime, Taken, hold_key
from service.core.booking import HOLD_NOT_HELD, TOO_MANY_HOLDS, HeldSlot, Holds, PendingRequest, decide
from tests.factory import Factory, User, at, iso
from tests.support import Rig, no_overlapping_confirmed, problem, rows, snapshot, until

MINUTE = timedelta(minutes=1)


async def hold(client: httpx.AsyncClient, patient: User, doctor_id: int, start: datetime, *, wait: int = 10,
               end: datetime | None = None, **body: Any) -> httpx.Response:
    headers = {**patient.headers, **({"Prefer": f"wait={wait}"} if wait else {})}
    if "appointment_type_id" not in body:
        body["end_time"] = iso(end or start + 30 * MINUTE)
    return await client.post("/holds", headers=headers,
                             json={"doctor_id": doctor_id, "start_time": iso(start), **body})


async def confirm(client: httpx.AsyncClient, patient: User, hold_id: int, *, wait: int = 10) -> httpx.Response:
    headers = {**patient.headers, **({"Prefer": f"wait={wait}"} if wait else {})}
    return await client.post(f"/holds/{hold_id}/confirm", headers=headers)


async def slot_starts(client: httpx.AsyncClient, doctor_id: int, start: datetime, end: datetime) -> list[str]:
    response = await client.get(f"/doctors/{doctor_id}/slots",
                                params={"from": iso(start), "to": iso(end), "duration": 30})
    assert response.status_code == 200, response.text
    return [s["start_time"] for s in response.json()["slots"]]


def expire(mysql: pymysql.Connection, hold_id: int) -> None:
    """As if its lifetime had run out (the shared stack keeps the default five minutes)."""
    with mysql.cursor() as cursor:
        cursor.execute("UPDATE holds SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND WHERE id = %s", (hold_id,))


# --- 1. the rule, without a database --------------------------------------------------------------------------

def test_a_hold_is_decided_as_a_booking_and_its_confirmation_may_use_its_own_time() -> None:
    nine = datetime(2030, 1, 15, 9)
    now = nine - timedelta(days=1)
    slot = (nine, nine + 30 * MINUTE)
    # Hold 7 of patient 1 at nine, live (its confirmation is request 12).
    doctor = DoctorTime([Available(nine, nine + timedelta(hours=2))], [], {hold_key(7): slot})
    patients = {1: Taken([], {hold_key(7): slot}), 2: Taken(), 3: Taken()}
    holds = Holds({7: HeldSlot(7, 1, "held", *slot, None, 0, 0, None, None)}, {1: 1, 3: 3}, per_patient=3)
    requests = [
        PendingRequest(10, 2, *slot, None, kind="hold"),  # another patient: the held slot is taken
        PendingRequest(11, 2, *slot, None),  # and cannot be booked either
        PendingRequest(12, 1, *slot, None, kind="confirm_hold", hold_id=7),  # its own time is free to it
        PendingRequest(13, 1, *slot, None, kind="confirm_hold", hold_id=7),  # confirmed once only
        PendingRequest(14, 3, nine + 60 * MINUTE, nine + 90 * MINUTE, None, kind="hold"),  # 3 live already
        PendingRequest(15, 2, nine + 60 * MINUTE, nine + 90 * MINUTE, None, kind="hold"),
        PendingRequest(16, 1, nine + 60 * MINUTE, nine + 90 * MINUTE, None),  # held by request 15
    ]
    decisions = decide(requests, doctor, patients, now, {}, {}, holds)
    assert [(d.status, d.reason) for d in decisions] == [
        ("rejected", SLOT_TAKEN), ("rejected", SLOT_TAKEN), ("confirmed", None), ("rejected", HOLD_NOT_HELD),
        ("rejected", TOO_MANY_HOLDS), ("confirmed", None), ("rejected", SLOT_TAKEN)]
    assert decisions[2].hold_id == 7 and holds.counts[2] == 1


def test_a_released_or_expired_hold_cannot_be_confirmed_and_another_patients_hold_is_not_yours() -> None:
    nine = datetime(2030, 1, 15, 9)
    slot = (nine, nine + 30 * MINUTE)
    doctor = DoctorTime([Available(nine, nine + timedelta(hours=1))], [])
    holds = Holds({7: HeldSlot(7, 1, "released", *slot, None, 0, 0, None, None),
                   8: HeldSlot(8, 1, "held", *slot, None, 0, 0, None, None)})
    requests = [PendingRequest(10, 1, *slot, None, kind="confirm_hold", hold_id=7),
                PendingRequest(11, 2, *slot, None, kind="confirm_hold", hold_id=8)]
    decisions = decide(requests, doctor, {}, nine - timedelta(days=1), {}, {}, holds)
    assert [d.reason for d in decisions] == [HOLD_NOT_HELD, HOLD_NOT_HELD]


# --- 2. through the API -----------------------------------------------------------------------------------------

async def test_a_hold_keeps_the_slot_until_confirmed_and_the_confirmation_makes_the_appointment(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    visit = await factory.appointment_type(doctor, duration_minutes=30, buffer_after_minutes=10)
    response = await hold(client, patient, doctor["id"], at(10), appointment_type_id=visit["id"])
    assert response.status_code == 201, response.text
    held = response.json()
    assert (held["status"], held["start_time"], held["end_time"]) == ("held", iso(at(10)), iso(at(10.5)))
    assert response.headers["location"] == f"/holds/{held['id']}"
    expires = datetime.fromisoformat(held["expires_at"]) - datetime.fromisoformat(held["created_at"])
    assert expires == timedelta(seconds=300)
    assert (await client.get(f"/holds/{held['id']}", headers=patient.headers)).json() == held
    [request] = rows(mysql, "SELECT kind, status, hold_id FROM booking_requests WHERE id = %s",
                     held["booking_request_id"])
    assert request == {"kind": "hold", "status": "confirmed", "hold_id": held["id"]}
    status = await client.get(f"/booking-requests/{held['booking_request_id']}", headers=patient.headers)
    assert (status.json()["kind"], status.json()["hold_id"]) == ("hold", held["id"])

    # Busy for everyone else, with its buffer: 10:30 is blocked until 10:40, so the next half hour offered is 11:00.
    assert await slot_starts(client, doctor["id"], at(9), at(12)) == [iso(at(h)) for h in (9, 9.5, 11, 11.5)]
    taken = await factory.book(other, doctor["id"], at(10), at(10.5), wait=10)
    assert problem(taken, 409)["reason"] == SLOT_TAKEN
    again = await hold(client, other, doctor["id"], at(10.25), end=at(10.75))
    assert problem(again, 409)["reason"] == SLOT_TAKEN

    confirmed = await confirm(client, patient, held["id"])
    assert confirmed.status_code == 201, confirmed.text
    appointment = confirmed.json()
    assert (appointment["status"], appointment["start_time"], appointment["appointment_type_id"]) == (
        "confirmed", iso(at(10)), visit["id"])
    [row] = rows(mysql, "SELECT buffer_after_minutes FROM appointments WHERE id = %s", appointment["id"])
    assert row["buffer_after_minutes"] == 10
    now_held = (await client.get(f"/holds/{held['id']}", headers=patient.headers)).json()
    assert (now_held["status"], now_held["appointment_id"]) == ("confirmed", appointment["id"])
    assert await slot_starts(client, doctor["id"], at(9), at(12)) == [iso(at(h)) for h in (9, 9.5, 11, 11.5)]
    # Confirmed: a second confirmation, or a release, is refused.
    assert problem(await confirm(client, patient, held["id"]), 409)["reason"] == "hold_not_held"
    assert problem(await client.delete(f"/holds/{held['id']}", headers=patient.headers), 409)
    no_overlapping_confirmed(mysql)


async def test_fifty_patients_race_to_hold_one_slot_one_holds_and_its_confirmation_wins_over_bookings(
    factory: Factory, clients: list[httpx.AsyncClient], mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    patients = [await factory.patient() for _ in range(50)]
    await factory.window(doctor, at(9), at(10))
    answers = await asyncio.gather(*(hold(clients[i % 2], p, doctor["id"], at(9)) for i, p in enumerate(patients)))
    assert sorted(a.status_code for a in answers) == [201] + [409] * 49, [a.text for a in answers if a.status_code
                                                                          not in (201, 409)]
    assert {a.json()["reason"] for a in answers if a.status_code == 409} == {SLOT_TAKEN}
    winner_index = next(i for i, a in enumerate(answers) if a.status_code == 201)
    winner, held = patients[winner_index], answers[winner_index].json()
    assert rows(mysql, "SELECT COUNT(*) AS n FROM holds")[0]["n"] == 1
    assert iso(at(9)) not in await slot_starts(clients[1], doctor["id"], at(9), at(10))

    # The others keep trying to book it while its patient confirms: the confirmation always wins.
    others = [p for p in patients if p is not winner][:20]
    bookings = [factory.book(p, doctor["id"], at(9), at(9.5), wait=10, client=clients[i % 2])
                for i, p in enumerate(others)]
    results = await asyncio.gather(confirm(clients[0], winner, held["id"]), *bookings)
    assert results[0].status_code == 201, results[0].text
    assert {r.status_code for r in results[1:]} == {409}
    assert rows(mysql, "SELECT patient_id FROM appointments WHERE held_start IS NOT NULL") == [
        {"patient_id": winner["id"]}]
    no_overlapping_confirmed(mysql)


async def test_after_its_expiry_a_hold_frees_its_slot_with_nobody_acting_and_cannot_be_confirmed(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(10))
    held = (await hold(client, patient, doctor["id"], at(9))).json()
    expire(mysql, held["id"])
    await asyncio.sleep(1.1)  # the slot reads' cache (CACHE_SECONDS)
    assert iso(at(9)) in await slot_starts(client, doctor["id"], at(9), at(10))
    assert (await client.get(f"/holds/{held['id']}", headers=patient.headers)).json()["status"] == "expired"
    body = problem(await confirm(client, patient, held["id"]), 409)
    assert body["reason"] == "hold_expired" and body["expires_at"] < held["expires_at"]
    assert (await factory.book(other, doctor["id"], at(9), at(9.5), wait=10)).status_code == 201
    # The refill (queued by the sweep for lapsed holds) marks it expired.
    await until(lambda: rows(mysql, "SELECT status FROM holds WHERE id = %s", held["id"]) == [{"status": "expired"}],
                "the sweep to mark the hold expired")


async def test_a_released_hold_frees_its_slot_at_once(client: httpx.AsyncClient, factory: Factory,
                                                      mysql: pymysql.Connection) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(10))
    held = (await hold(client, patient, doctor["id"], at(9))).json()
    problem(await client.delete(f"/holds/{held['id']}", headers=other.headers), 404)
    released = await client.delete(f"/holds/{held['id']}", headers=patient.headers)
    assert (released.status_code, released.json()["status"]) == (200, "released")
    again = await client.delete(f"/holds/{held['id']}", headers=patient.headers)
    assert (again.status_code, again.json()["ended_at"]) == (200, released.json()["ended_at"])
    assert problem(await confirm(client, patient, held["id"]), 409)["reason"] == "hold_not_held"
    assert (await factory.book(other, doctor["id"], at(9), at(9.5), wait=10)).status_code == 201


async def test_a_patient_has_at_most_three_live_holds(client: httpx.AsyncClient, factory: Factory,
                                                     mysql: pymysql.Connection) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    held = [(await hold(client, patient, doctor["id"], at(9 + k * 0.5))).json() for k in range(3)]
    assert [h["status"] for h in held] == ["held"] * 3
    before = snapshot(mysql)
    body = problem(await hold(client, patient, doctor["id"], at(11)), 409)
    assert (body["reason"], body["limit"]) == (TOO_MANY_HOLDS, 3)
    assert snapshot(mysql) == before
    # One let go (or lapsed): room for another.
    assert (await client.delete(f"/holds/{held[0]['id']}", headers=patient.headers)).status_code == 200
    assert (await hold(client, patient, doctor["id"], at(11))).status_code == 201
    expire(mysql, held[1]["id"])
    assert (await hold(client, patient, doctor["id"], at(11.5))).status_code == 201
    # A patient's own hold counts as their time: no booking of theirs may overlap it.
    booked = await factory.book(patient, doctor["id"], at(10) + 15 * MINUTE, at(10.75), wait=10)
    assert problem(booked, 409)["reason"] in ("patient_busy", SLOT_TAKEN)


async def test_holds_are_idempotent_with_their_key(client: httpx.AsyncClient, factory: Factory,
                                                   mysql: pymysql.Connection) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(10))
    key = {"Idempotency-Key": "hold-once"}
    body = {"doctor_id": doctor["id"], "start_time": iso(at(9)), "end_time": iso(at(9.5))}
    first = await client.post("/holds", headers={**patient.headers, **key, "Prefer": "wait=10"}, json=body)
    again = await client.post("/holds", headers={**patient.headers, **key, "Prefer": "wait=10"}, json=body)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    # The same key for a booking of the same slot is another request: refused.
    problem(await client.post("/appointments", headers={**patient.headers, **key}, json=body), 409)
    held = first.json()
    confirm_key = {**patient.headers, "Idempotency-Key": "confirm-once", "Prefer": "wait=10"}
    one = await client.post(f"/holds/{held['id']}/confirm", headers=confirm_key)
    two = await client.post(f"/holds/{held['id']}/confirm", headers=confirm_key)
    assert one.status_code == two.status_code == 201 and one.json()["id"] == two.json()["id"]
    assert len(rows(mysql, "SELECT id FROM booking_requests WHERE kind = 'confirm_hold'")) == 1


async def test_bad_input_and_other_peoples_holds_are_refused_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(10))
    held = (await hold(client, patient, doctor["id"], at(9))).json()
    path = f"/holds/{held['id']}"

    async def refused(response: Any, status: int, field: str | None = None) -> None:
        before = snapshot(mysql)
        problem(await response, status, field)
        assert snapshot(mysql) == before

    for outsider in (other, doctor):
        await refused(client.get(path, headers=outsider.headers), 404)
        await refused(client.post(f"{path}/confirm", headers=outsider.headers), 404)
        await refused(client.delete(path, headers=outsider.headers), 404)
    await refused(client.get(path), 401)
    await refused(client.post("/holds", headers=doctor.headers,
                              json={"doctor_id": doctor["id"], "start_time": iso(at(9.5)),
                                    "end_time": iso(at(10))}), 403)
    body = {"doctor_id": doctor["id"], "start_time": iso(at(9.5)), "end_time": iso(at(10))}
    for bad, field in (({**body, "start_time": "soon"}, None), ({**body, "end_time": iso(at(10) + MINUTE)}, None),
                       ({**body, "doctor_id": "1"}, None), ({**body, "extra": 1}, None),
                       ({**body, "start_time": iso(at(-60))}, "start_time")):
        await refused(client.post("/holds", headers=patient.headers, json=bad), 400, field)
    await refused(client.post("/holds", headers=patient.headers, json={**body, "doctor_id": 2**53 - 1}), 404)
    await refused(client.post("/holds", headers=patient.headers,
                              json={**body, "end_time": None, "appointment_type_id": 99999999}), 404)
    await refused(client.get("/holds/99999999", headers=patient.headers), 404)
    await refused(client.post("/holds/99999999/confirm", headers=patient.headers), 404)
    await refused(client.delete("/holds/0", headers=patient.headers), 400)


# --- 3. a confirmation stored in time, decided after the expiry ---------------------------------------------------

async def test_a_confirmation_stored_before_the_expiry_succeeds_even_when_decided_after_it_and_a_lapsed_hold_frees(
    rig: Rig,
) -> None:
    api = rig.api(HOLD_SECONDS="2")
    worker = rig.worker(HOLD_SECONDS="2")
    async with rig.client(api) as (http, factory):
        doctor, patient, other = await factory.doctor(), await factory.patient(), await factory.patient()
        await factory.window(doctor, at(9), at(10))
        held = (await hold(http, patient, doctor["id"], at(9))).json()
        forgotten = (await hold(http, patient, doctor["id"], at(9.5))).json()  # left to lapse
        rig.processes.stop(worker)  # nothing is decided for a while
        booking = await factory.book(other, doctor["id"], at(9), at(9.5))  # stored first, while the hold is live
        confirmation = await confirm(http, patient, held["id"], wait=0)
        assert (booking.status_code, confirmation.status_code) == (202, 202)
        await asyncio.sleep(2.5)  # past the expiry: still held for the pending confirmation
        assert rig.rows("SELECT status FROM holds WHERE id = %s", held["id"]) == [{"status": "held"}]
        rig.worker(HOLD_SECONDS="2")
        decided = await http.get(f"/booking-requests/{confirmation.json()['request_id']}?wait=20",
                                 headers=patient.headers)
        assert decided.json()["status"] == "confirmed", decided.text
        lost = await http.get(f"/booking-requests/{booking.json()['request_id']}?wait=20", headers=other.headers)
        assert (lost.json()["status"], lost.json()["reason"]) == ("rejected", SLOT_TAKEN)
        assert rig.rows("SELECT patient_id FROM appointments") == [{"patient_id": patient["id"]}]
        # The other hold lapsed with nobody acting: its slot is bookable again.
        assert forgotten["status"] == "held"
        assert (await factory.book(other, doctor["id"], at(9.5), at(10), wait=10)).status_code == 201


async def test_the_front_desk_holds_for_a_patient_and_confirms_it_for_them(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient, desk = await factory.doctor(), await factory.patient(), await factory.staff()
    await factory.window(doctor, at(9), at(12))
    # Staff name the patient, as for a booking; without one it is a 400, and a patient cannot name another.
    problem(await hold(client, desk, doctor["id"], at(9)), 400, "patient_id")
    problem(await hold(client, patient, doctor["id"], at(9), patient_id=patient["id"]), 403)
    held = await hold(client, desk, doctor["id"], at(9), patient_id=patient["id"])
    assert held.status_code == 201, held.text
    assert held.json()["patient_id"] == patient["id"]
    [request] = rows(mysql, "SELECT patient_id, requested_by FROM booking_requests WHERE kind = 'hold'")
    assert request == {"patient_id": patient["id"], "requested_by": desk["id"]}
    # The patient sees it as theirs; the desk confirms it for them.
    assert (await client.get(f"/holds/{held.json()['id']}", headers=patient.headers)).status_code == 200
    booked = await confirm(client, desk, held.json()["id"])
    assert booked.status_code == 201, booked.text
    assert (booked.json()["patient_id"], booked.json()["start_time"]) == (patient["id"], iso(at(9)))
    other = await factory.patient()
    problem(await client.get(f"/holds/{held.json()['id']}", headers=other.headers), 404)
