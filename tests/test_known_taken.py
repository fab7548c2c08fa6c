"""A booking the API process knows the worker would reject slot_taken (the same span and type as one it has just
confirmed or rejected so) is refused at once: 409 slot_taken, nothing stored (api/schedule_cache.py's KnownTaken).
Never for a time that may have come free: every change but a confirmation forgets the doctor's known bookings, in
this process at once and in the others by pub/sub."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pymysql
import pytest

from service.api.schedule_cache import KnownTaken, ScheduleVersions
from service.core.availability import SLOT_TAKEN
from tests.factory import Factory, User, at, iso
from tests.support import Rig, problem

NINE = datetime(2030, 1, 15, 9, tzinfo=UTC).replace(tzinfo=None)
HOUR = timedelta(hours=1)


def requests_of(mysql: pymysql.Connection, patient: User) -> int:
    with mysql.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) AS n FROM booking_requests WHERE patient_id = %s", (patient["id"],))
        return cursor.fetchone()["n"]


def refused_at_once(response: httpx.Response) -> None:
    body = problem(response, 409)
    assert body["reason"] == SLOT_TAKEN and "request_id" not in body, body


def test_known_bookings_are_a_span_and_type_for_a_while() -> None:
    known = KnownTaken(trust_seconds=0.3, per_doctor=3, doctors=2)
    known.learn(1, NINE, NINE + HOUR, None)
    known.learn(1, NINE + 2 * HOUR, NINE + 3 * HOUR, 7)
    assert known.taken(1, NINE, NINE + HOUR, None) and known.taken(1, NINE + 2 * HOUR, NINE + 3 * HOUR, 7)
    # Another span or type may fail an earlier rule first (outside the hours, too soon...), which the worker names.
    assert not known.taken(1, NINE + HOUR / 2, NINE + HOUR, None)
    assert not known.taken(1, NINE + 2 * HOUR, NINE + 3 * HOUR, 8)
    assert not known.taken(2, NINE, NINE + HOUR, None)  # another doctor's time
    time.sleep(0.35)
    assert not known.taken(1, NINE, NINE + HOUR, None)  # trusted for trust_seconds only

    for n in range(4):  # per_doctor: the oldest go first
        known.learn(1, NINE + n * HOUR, NINE + (n + 1) * HOUR, None)
    assert not known.taken(1, NINE, NINE + HOUR, None) and known.taken(1, NINE + 3 * HOUR, NINE + 4 * HOUR, None)
    known.learn(2, NINE, NINE + HOUR, None)
    known.learn(3, NINE, NINE + HOUR, None)  # doctors: the doctor first learned about goes
    assert not known.taken(1, NINE + 3 * HOUR, NINE + 4 * HOUR, None) and known.taken(3, NINE, NINE + HOUR, None)

    never = KnownTaken(trust_seconds=0)
    never.learn(1, NINE, NINE + HOUR, None)
    assert not never.taken(1, NINE, NINE + HOUR, None)


def test_every_change_but_a_confirmation_forgets_the_doctors_known_times() -> None:
    versions = ScheduleVersions(known_taken_seconds=60)
    for doctor in (1, 2):
        versions.taken.learn(doctor, NINE, NINE + HOUR, None)
    versions.changed(1, took_only=True)  # another confirmation: nothing came free
    assert versions.taken.taken(1, NINE, NINE + HOUR, None)
    versions.changed(1)  # a cancellation, a move away
    assert not versions.taken.taken(1, NINE, NINE + HOUR, None) and versions.taken.taken(2, NINE, NINE + HOUR, None)
    versions.changed(2, listing=True)  # windows, hours, time off, types
    assert not versions.taken.taken(2, NINE, NINE + HOUR, None)
    versions.taken.learn(1, NINE, NINE + HOUR, None)
    versions.all_changed()  # a resubscription: messages may have been missed
    assert not versions.taken.taken(1, NINE, NINE + HOUR, None)


async def test_a_known_taken_time_is_refused_at_once_and_nothing_is_stored(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, first, second = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    booked = await factory.booked(first, doctor["id"], at(10), at(11))

    refused_at_once(await factory.book(second, doctor["id"], at(10), at(11)))
    refused_at_once(await factory.book(second, doctor["id"], at(10), at(11), wait=5))
    assert requests_of(mysql, second) == 0
    # Another span, even overlapping: stored and decided by the worker, which names the first rule it breaks.
    overlapping = await factory.book(second, doctor["id"], at(10.5), at(12.5), wait=5)
    assert problem(overlapping, 409)["reason"] == "outside_availability" and overlapping.json()["request_id"]
    assert (await factory.booked(second, doctor["id"], at(11), at(12)))["status"] == "confirmed"

    # A replayed Idempotency-Key is its stored request, not a refusal.
    key = {"Idempotency-Key": "known-taken-replay"}
    third = await factory.patient()
    kept = await factory.book(third, doctor["id"], at(9), at(10), wait=5, **key)
    assert kept.status_code == 201, kept.text
    replayed = await factory.book(third, doctor["id"], at(9), at(10), wait=5, **key)
    assert replayed.status_code == 201 and replayed.json()["id"] == kept.json()["id"], replayed.text
    assert requests_of(mysql, third) == 1

    # Cancelled through this process: bookable at once.
    cancelled = await client.delete(f"/appointments/{booked['id']}", headers=first.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert (await factory.booked(second, doctor["id"], at(10), at(11)))["status"] == "confirmed"


async def test_a_move_frees_its_old_time_for_the_next_booking_at_once(client: httpx.AsyncClient,
                                                                      factory: Factory) -> None:
    doctor, mover, next_one = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    booked = await factory.booked(mover, doctor["id"], at(10), at(10.5))
    moved = await client.post(f"/appointments/{booked['id']}/reschedule", json={"start_time": iso(at(11))},
                              headers={**mover.headers, "Prefer": "wait=10"})
    assert moved.status_code == 201, moved.text
    refused_at_once(await factory.book(next_one, doctor["id"], at(11), at(11.5)))  # its new time: known taken
    assert (await factory.booked(next_one, doctor["id"], at(10), at(10.5)))["status"] == "confirmed"


async def test_every_api_process_learns_from_every_decision(rig: Rig) -> None:
    """A booking stored through one API process and confirmed: another process, which stored nothing, refuses the
    same span and type at once (it heard the decisions message); and likewise for a rejection slot_taken."""
    apis = [rig.api(KNOWN_TAKEN_SECONDS="60"), rig.api(KNOWN_TAKEN_SECONDS="60")]
    rig.worker()
    async with rig.client(apis[0]) as (_, factory), rig.client(apis[1]) as (other, _):
        doctor, first, second, third = (await factory.doctor(), await factory.patient(), await factory.patient(),
                                        await factory.patient())
        await factory.window(doctor, at(9), at(11))
        await factory.booked(first, doctor["id"], at(10), at(10.5))
        await asyncio.sleep(1)  # the message reaches the other process within milliseconds
        refused_at_once(await factory.book(second, doctor["id"], at(10), at(10.5), client=other))
        assert requests_of(rig.mysql, second) == 0

        # Stored through the other process, rejected slot_taken by the worker (it overlaps 10:00): heard by the first.
        overlapping = await factory.book(second, doctor["id"], at(10.25), at(10.75), wait=5, client=other)
        assert problem(overlapping, 409)["reason"] == SLOT_TAKEN and overlapping.json()["request_id"]
        await asyncio.sleep(1)
        refused_at_once(await factory.book(third, doctor["id"], at(10.25), at(10.75)))
        assert requests_of(rig.mysql, third) == 0


@pytest.mark.parametrize("change", ["cancel", "window"])
async def test_a_change_through_another_api_process_is_heard_and_forgotten(rig: Rig, change: str) -> None:
    """Trusted for a minute here, so only the schedule-changed message can explain the booking going through."""
    apis = [rig.api(KNOWN_TAKEN_SECONDS="60"), rig.api(KNOWN_TAKEN_SECONDS="60")]
    rig.worker()
    async with rig.client(apis[0]) as (_, factory), rig.client(apis[1]) as (other, _):
        doctor, first, second = await factory.doctor(), await factory.patient(), await factory.patient()
        await factory.window(doctor, at(9), at(10.5))
        booked = await factory.booked(first, doctor["id"], at(10), at(10.5))
        refused_at_once(await factory.book(second, doctor["id"], at(10), at(10.5)))
        if change == "cancel":
            response = await other.delete(f"/appointments/{booked['id']}", headers=first.headers)
        else:  # a window added elsewhere frees nothing, yet any change but a confirmation forgets
            response = await other.post("/doctors/availability", headers=doctor.headers,
                                        json={"start_time": iso(at(13)), "end_time": iso(at(14))})
        assert response.status_code in (200, 201), response.text

        deadline = time.monotonic() + 30  # against a hang (the message comes within milliseconds)
        while (answer := await factory.book(second, doctor["id"], at(10), at(10.5), wait=5)).status_code == 409 \
                and "request_id" not in answer.json():
            assert time.monotonic() < deadline, "the other process's change was never heard"
            await asyncio.sleep(0.05)
        assert answer.status_code == 201 or answer.json()["reason"] == SLOT_TAKEN, answer.text  # stored, decided
