"""The waitlist: freed time offered to the oldest fitting entry (a hold), the next one when an offer lapses or is
declined, booked directly with auto_book; entries that do not fit are skipped. Offers survive a worker killed
between the freeing and the offer (the sweep finds them), and are made once.

Against the shared stack and, where a hold's lifetime must run out for real or a worker must die, a rig of the
test's own.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta
from typing import Any

import httpx
import pymysql

from service.core.settings import Settings
from tests.factory import Factory, User, at, iso
from tests.support import Rig, lock_waits, no_overlapping_confirmed, problem, rows, snapshot, until

MINUTE = timedelta(minutes=1)


async def join(client: httpx.AsyncClient, patient: User, doctor_id: int, not_before: datetime,
               not_after: datetime, **body: Any) -> dict[str, Any]:
    response = await client.post("/waitlist", headers=patient.headers, json={
        "doctor_id": doctor_id, "not_before": iso(not_before), "not_after": iso(not_after), **body})
    assert response.status_code == 201, response.text
    return response.json()


def statuses(mysql: pymysql.Connection) -> dict[int, str]:
    return {r["id"]: r["status"] for r in rows(mysql, "SELECT id, status FROM waitlist_entries")}


def entry_row(mysql: pymysql.Connection, entry_id: int) -> dict[str, Any]:
    [row] = rows(mysql, "SELECT * FROM waitlist_entries WHERE id = %s", entry_id)
    return row


async def offered(mysql: pymysql.Connection, entry_id: int) -> dict[str, Any]:
    """Wait for the entry's offer; its row."""
    return await until(lambda: (row := entry_row(mysql, entry_id))["status"] == "offered" and row,
                       f"entry {entry_id} to be offered")


async def cancel(client: httpx.AsyncClient, user: User, appointment_id: int) -> None:
    response = await client.delete(f"/appointments/{appointment_id}", headers=user.headers)
    assert response.status_code == 200, response.text


async def one_slot_booked(factory: Factory) -> tuple[User, User, dict[str, Any]]:
    """A doctor whose only free half hour, 09:00 on day 2, is booked: the doctor, the patient, the appointment."""
    doctor, booker = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(9.5))
    return doctor, booker, await factory.booked(booker, doctor["id"], at(9), at(9.5))


# --- 1. offers in order, a lapsed offer goes to the next, entries that do not fit are skipped ---------------------

async def test_a_freed_slot_goes_to_the_oldest_fitting_entry_then_to_the_next_when_the_offer_lapses(
    rig: Rig,
) -> None:
    api = rig.api(HOLD_SECONDS="3")
    rig.worker(HOLD_SECONDS="3")
    async with rig.client(api) as (http, factory):
        doctor, booker, appointment = await one_slot_booked(factory)
        long_visit = await factory.appointment_type(doctor, duration_minutes=60)
        elsewhere, too_long, first, second, third = [await factory.patient() for _ in range(5)]
        # The two oldest entries do not fit: another range, a type longer than the freed time.
        skipped = [await join(http, elsewhere, doctor["id"], at(12), at(14)),
                   await join(http, too_long, doctor["id"], at(8), at(11), appointment_type_id=long_visit["id"])]
        a, b, c = [await join(http, p, doctor["id"], at(8), at(11)) for p in (first, second, third)]
        await asyncio.sleep(1.5)  # a refill ran for each (and the sweep): nothing is free, nothing offered
        assert set(statuses(rig.mysql).values()) == {"waiting"} and rig.rows("SELECT id FROM holds") == []

        await cancel(http, booker, appointment["id"])
        offer = await offered(rig.mysql, a["id"])
        assert {e: s for e, s in statuses(rig.mysql).items() if e != a["id"]} == dict.fromkeys(
            [skipped[0]["id"], skipped[1]["id"], b["id"], c["id"]], "waiting")
        [hold] = rig.rows("SELECT * FROM holds WHERE id = %s", offer["hold_id"])
        assert (hold["patient_id"], hold["start_time"], hold["waitlist_entry_id"]) == (
            first["id"], at(9).replace(tzinfo=None), a["id"])
        mine = (await http.get("/waitlist", headers=first.headers)).json()["items"]
        assert [(e["status"], e["hold_id"]) for e in mine] == [("offered", hold["id"])] and mine[0]["expires_at"]
        # The held slot is nobody else's, in reads and bookings.
        slots = await http.get(f"/doctors/{doctor['id']}/slots", params={"from": iso(at(9)), "to": iso(at(10)),
                                                                          "duration": 30})
        assert slots.json()["slots"] == []

        # The first lets it lapse: it goes to the second, and the first to the end of the line.
        second_offer = await offered(rig.mysql, b["id"])
        assert entry_row(rig.mysql, a["id"])["status"] == "waiting"
        assert rig.rows("SELECT status FROM holds WHERE id = %s", hold["id"]) == [{"status": "expired"}]
        accepted = await http.post(f"/holds/{second_offer['hold_id']}/confirm",
                                   headers={**second.headers, "Prefer": "wait=10"})
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["start_time"] == iso(at(9))
        booked = entry_row(rig.mysql, b["id"])
        assert (booked["status"], booked["appointment_id"]) == ("booked", accepted.json()["id"])
        await asyncio.sleep(1.5)  # sweeps and refills come and go: the third (and the first) keep waiting
        assert statuses(rig.mysql) == {skipped[0]["id"]: "waiting", skipped[1]["id"]: "waiting",
                                       a["id"]: "waiting", b["id"]: "booked", c["id"]: "waiting"}
        assert len(rig.rows("SELECT id FROM holds")) == 2
        no_overlapping_confirmed(rig.mysql)


async def test_a_declined_offer_goes_to_the_next_and_is_not_offered_again_to_who_declined_it(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, booker, appointment = await one_slot_booked(factory)
    first, second = await factory.patient(), await factory.patient()
    a = await join(client, first, doctor["id"], at(8), at(11))
    b = await join(client, second, doctor["id"], at(8), at(11))
    await cancel(client, booker, appointment["id"])
    offer = await offered(mysql, a["id"])
    declined = await client.delete(f"/holds/{offer['hold_id']}", headers=first.headers)
    assert (declined.status_code, declined.json()["status"]) == (200, "released")
    await offered(mysql, b["id"])
    back = entry_row(mysql, a["id"])
    assert (back["status"], back["hold_id"], back["last_offered_start"]) == ("waiting", None, at(9).replace(
        tzinfo=None))
    assert back["queued_at"] > entry_row(mysql, b["id"])["queued_at"]
    # The second leaves the waitlist: its offer is released, and the slot the first declined is not offered again.
    left = await client.delete(f"/waitlist/{b['id']}", headers=second.headers)
    assert (left.status_code, left.json()["status"]) == (200, "cancelled")
    await asyncio.sleep(1.5)
    assert entry_row(mysql, a["id"])["status"] == "waiting"
    assert rows(mysql, "SELECT status FROM holds ORDER BY id") == [{"status": "released"}, {"status": "released"}]


async def test_joining_while_a_fitting_slot_is_free_offers_it_at_once(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(10))
    visit = await factory.appointment_type(doctor, duration_minutes=20, buffer_after_minutes=10)
    entry = await join(client, patient, doctor["id"], at(9.25), at(10), appointment_type_id=visit["id"])
    offer = await offered(mysql, entry["id"])
    [hold] = rows(mysql, "SELECT start_time, end_time, buffer_after_minutes FROM holds WHERE id = %s",
                  offer["hold_id"])
    # The first slot of the type on the window's grid (09:00, 09:20, 09:40) inside the range.
    assert (hold["start_time"], hold["end_time"], hold["buffer_after_minutes"]) == (
        (at(9) + 20 * MINUTE).replace(tzinfo=None), (at(9) + 40 * MINUTE).replace(tzinfo=None), 10)


async def test_a_refill_with_nothing_to_offer_never_waits_for_the_doctors_lock(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, settings: Settings,
) -> None:
    """The sweep queues a refill every second for a doctor with someone waiting: finding nothing to offer, it must
    not hold up the doctor's bookings by taking the doctor's row lock."""
    doctor, _, _ = await one_slot_booked(factory)
    await join(client, await factory.patient(), doctor["id"], at(8), at(11))
    await asyncio.sleep(0.5)  # the refill queued by joining has run
    address = settings.mysql
    holder = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                             database=address.database)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (doctor["id"],))
            waits = []
            for _ in range(25):  # 3 s: three sweeps, each queueing a refill of this doctor
                waits.append(lock_waits(mysql, address.database))
                await asyncio.sleep(0.12)
    finally:
        holder.rollback()
        holder.close()
    assert max(waits) == 0, waits


async def test_time_moved_away_from_or_given_back_is_offered_at_once(rig: Rig) -> None:
    """The worker's reschedule frees the old time and queues the refill itself; withdrawn time off gives time back
    and the API queues it. The sweep runs once a minute here, so the offers come from those."""
    api = rig.api(SWEEP_EVERY_SECONDS="60")
    rig.worker(SWEEP_EVERY_SECONDS="60")
    async with rig.client(api) as (client, factory):
        doctor, booker, appointment = await one_slot_booked(factory)
        await factory.window(doctor, at(11), at(11.5))
        first, second = await factory.patient(), await factory.patient()
        a = await join(client, first, doctor["id"], at(8), at(10))
        moved = await client.post(f"/appointments/{appointment['id']}/reschedule",
                                  headers={**booker.headers, "Prefer": "wait=10"}, json={"start_time": iso(at(11))})
        assert moved.status_code == 201, moved.text
        assert (await offered(rig.mysql, a["id"]))["hold_id"]

        time_off = await factory.time_off(doctor, at(12), at(13))
        await factory.window(doctor, at(12), at(12.5))  # inside the time off: nothing to offer yet
        b = await join(client, second, doctor["id"], at(12), at(13))
        await asyncio.sleep(1)
        assert entry_row(rig.mysql, b["id"])["status"] == "waiting"
        withdrawn = await client.delete(f"/doctors/me/time-off/{time_off['id']}", headers=doctor.headers)
        assert withdrawn.status_code == 204, withdrawn.text
        assert (await offered(rig.mysql, b["id"]))["hold_id"]


# --- 2. auto_book -------------------------------------------------------------------------------------------------

async def test_auto_book_books_the_freed_slot_directly(client: httpx.AsyncClient, factory: Factory,
                                                       mysql: pymysql.Connection) -> None:
    doctor, booker, appointment = await one_slot_booked(factory)
    patient = await factory.patient()
    entry = await join(client, patient, doctor["id"], at(8), at(11), auto_book=True)
    await cancel(client, booker, appointment["id"])
    booked = await until(lambda: (row := entry_row(mysql, entry["id"]))["status"] == "booked" and row,
                         "the entry to be booked")
    mine = (await client.get("/appointments/my-appointments", headers=patient.headers)).json()["items"]
    assert [(a["id"], a["start_time"], a["status"]) for a in mine] == [
        (booked["appointment_id"], iso(at(9)), "confirmed")]
    assert rows(mysql, "SELECT id FROM holds") == []
    history = await client.get(f"/appointments/{booked['appointment_id']}/history", headers=patient.headers)
    assert [(h["action"], h["actor_role"]) for h in history.json()["items"]] == [("confirmed", "system")]
    no_overlapping_confirmed(mysql)


# --- 3. a worker killed between the freeing and the offer ------------------------------------------------------

async def test_a_worker_killed_before_its_offer_committed_still_offers_once(rig: Rig) -> None:
    api = rig.api()
    doomed = rig.worker(FAULT_POINT="refill_before_commit")
    async with rig.client(api) as (http, factory):
        doctor, booker, appointment = await one_slot_booked(factory)
        patient = await factory.patient()
        entry = await join(http, patient, doctor["id"], at(8), at(11))
        await cancel(http, booker, appointment["id"])
        await until(lambda: doomed.poll() is not None, "the worker to die inside the refill")
        assert doomed.returncode == -signal.SIGKILL
        assert entry_row(rig.mysql, entry["id"])["status"] == "waiting" and rig.rows("SELECT id FROM holds") == []

        rig.worker()  # its refill job runs again (the lease lapsed), and the sweep queues one too
        offer = await offered(rig.mysql, entry["id"])
        await asyncio.sleep(2.5)  # more sweeps and refills: still one offer
        assert rig.rows("SELECT id, waitlist_entry_id, status FROM holds") == [
            {"id": offer["hold_id"], "waitlist_entry_id": entry["id"], "status": "held"}]
        assert entry_row(rig.mysql, entry["id"])["hold_id"] == offer["hold_id"]


# --- 4. who may do what, and bad input --------------------------------------------------------------------------

async def test_waitlist_endpoints_refuse_bad_input_and_other_peoples_entries_and_change_nothing(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other_doctor = await factory.doctor(), await factory.doctor()
    patient, other_patient = await factory.patient(), await factory.patient()
    others_type = await factory.appointment_type(other_doctor)
    entry = await join(client, patient, doctor["id"], at(8), at(11))
    await join(client, other_patient, other_doctor["id"], at(8), at(11))

    async def refused(response: Any, status: int, field: str | None = None) -> None:
        before = snapshot(mysql)
        problem(await response, status, field)
        assert snapshot(mysql) == before

    body = {"doctor_id": doctor["id"], "not_before": iso(at(8)), "not_after": iso(at(11))}
    await refused(client.post("/waitlist", json=body), 401)
    await refused(client.post("/waitlist", headers=doctor.headers, json=body), 403)
    for bad, field in (({**body, "not_after": iso(at(7))}, "not_after"),
                       ({**body, "not_before": iso(at(-72)), "not_after": iso(at(-70))}, "not_after"),
                       ({**body, "not_after": iso(at(8, offset=70))}, "not_after"),
                       ({**body, "not_after": iso(at(8.25))}, "not_after"),  # shorter than 30 minutes
                       ({**body, "duration_minutes": 7}, None), ({**body, "duration_minutes": 0}, None),
                       ({**body, "duration_minutes": 30, "appointment_type_id": others_type["id"]}, None),
                       ({**body, "auto_book": "yes"}, None), ({**body, "extra": 1}, None),
                       ({**body, "not_before": "tomorrow"}, None), ({"doctor_id": doctor["id"]}, None)):
        await refused(client.post("/waitlist", headers=patient.headers, json=bad), 400, field)
    await refused(client.post("/waitlist", headers=patient.headers, json={**body, "doctor_id": 2**53 - 1}), 404)
    await refused(client.post("/waitlist", headers=patient.headers,
                              json={**body, "appointment_type_id": others_type["id"]}), 404)

    # Reading: a patient sees their own entries, a doctor their own line, nobody else's.
    mine = (await client.get("/waitlist", headers=patient.headers)).json()
    assert [e["id"] for e in mine["items"]] == [entry["id"]] and mine["total"] == 1
    line = (await client.get("/waitlist", headers=doctor.headers)).json()
    assert [(e["id"], e["patient_id"]) for e in line["items"]] == [(entry["id"], patient["id"])]
    own = await client.get("/waitlist", headers=doctor.headers, params={"doctor_id": doctor["id"]})
    assert own.json()["items"] == line["items"]
    await refused(client.get("/waitlist", headers=doctor.headers, params={"doctor_id": other_doctor["id"]}), 403)
    await refused(client.get("/waitlist", headers=patient.headers, params={"doctor_id": doctor["id"]}), 403)
    await refused(client.get("/waitlist", headers=patient.headers, params={"status": "nope"}), 400)
    await refused(client.get("/waitlist", headers=patient.headers, params={"doctor_id": "x"}), 400)

    # Leaving: only its patient; anyone else's is not found (its doctor may see it, not end it).
    await refused(client.delete(f"/waitlist/{entry['id']}", headers=other_patient.headers), 404)
    await refused(client.delete(f"/waitlist/{entry['id']}", headers=other_doctor.headers), 404)
    await refused(client.delete(f"/waitlist/{entry['id']}", headers=doctor.headers), 403)
    await refused(client.delete("/waitlist/99999999", headers=patient.headers), 404)
    left = await client.delete(f"/waitlist/{entry['id']}", headers=patient.headers)
    assert (left.status_code, left.json()["status"]) == (200, "cancelled")
    again = await client.delete(f"/waitlist/{entry['id']}", headers=patient.headers)
    assert again.json()["ended_at"] == left.json()["ended_at"]
