"""Doctors: directory, specialty, availability windows, free intervals, slots and the doctor's schedule."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pymysql

from tests.factory import Factory, User, at, day, iso

H = timedelta(hours=1)
M = timedelta(minutes=1)


def problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert `response` is an RFC 9457 problem with `status` (naming `field`, if given); return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def naive(value: datetime) -> datetime:
    """A UTC time as the naive value MySQL stores."""
    return value.astimezone(UTC).replace(tzinfo=None)


def window_rows(mysql: pymysql.Connection, doctor_id: int) -> list[tuple[datetime, datetime]]:
    with mysql.cursor() as cursor:
        cursor.execute("SELECT start_time, end_time FROM availabilities WHERE doctor_id = %s "
                       "ORDER BY start_time", (doctor_id,))
        return [(r["start_time"], r["end_time"]) for r in cursor.fetchall()]


def insert_window(mysql: pymysql.Connection, doctor_id: int, start: datetime, end: datetime) -> int:
    """A window written straight to the table (the API refuses windows that start in the past)."""
    with mysql.cursor() as cursor:
        cursor.execute("INSERT INTO availabilities (doctor_id, start_time, end_time, created_at) "
                       "VALUES (%s, %s, %s, UTC_TIMESTAMP(6))", (doctor_id, naive(start), naive(end)))
        return cursor.lastrowid


def interval(start: datetime, end: datetime) -> dict[str, str]:
    return {"start_time": iso(start), "end_time": iso(end)}


async def post_window(client: httpx.AsyncClient, doctor: User, body: Any) -> httpx.Response:
    return await client.post("/doctors/availability", headers=doctor.headers, json=body)


async def cancel(client: httpx.AsyncClient, patient: User, appointment: dict[str, Any]) -> None:
    response = await client.delete(f"/appointments/{appointment['id']}", headers=patient.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


# --- the directory ------------------------------------------------------------------------------------------

async def test_list_doctors_is_paginated_50_by_default_at_most_200_and_leaves_out_patients(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    with mysql.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO users (email, name, role, password_hash, created_at) "
            "VALUES (%s, %s, 'Doctor', 'x', UTC_TIMESTAMP(6))",
            [(f"bulk{n:02}@clinic.example", f"Bulk {n:02}") for n in range(55)],
        )
    patient = await factory.patient(name="Bulk Patient")

    first = await client.get("/doctors")
    assert first.status_code == 200, first.text
    page = first.json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (55, 50, 0, 50)
    assert [d["name"] for d in page["items"]] == [f"Bulk {n:02}" for n in range(50)]
    assert set(page["items"][0]) == {"id", "name", "specialty", "timezone", "created_at"}  # no login email in public
    assert "@clinic.example" not in first.text
    assert page["items"][0]["created_at"].endswith("Z")

    rest = (await client.get("/doctors", params={"offset": 50})).json()
    assert (rest["total"], rest["offset"]) == (55, 50)
    assert [d["name"] for d in rest["items"]] == [f"Bulk {n:02}" for n in range(50, 55)]

    middle = (await client.get("/doctors", params={"limit": 3, "offset": 10})).json()
    assert [d["name"] for d in middle["items"]] == ["Bulk 10", "Bulk 11", "Bulk 12"]
    assert (middle["total"], middle["limit"]) == (55, 3)

    everyone = (await client.get("/doctors", params={"limit": 200})).json()
    assert len(everyone["items"]) == 55 and everyone["limit"] == 200
    assert patient["id"] not in {d["id"] for d in everyone["items"]}
    assert (await client.get("/doctors", params={"q": "Patient"})).json() == {
        "items": [], "total": 0, "limit": 50, "offset": 0}

    problem(await client.get("/doctors", params={"limit": 201}), 400, "limit")
    problem(await client.get("/doctors", params={"limit": 0}), 400, "limit")
    problem(await client.get("/doctors", params={"offset": -1}), 400, "offset")


async def test_search_by_name_is_a_case_blind_substring_with_wildcards_taken_literally(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    names = ["Ada Lovelace", "ADAM Smith", "Grace 100% Hopper", "Grace 1000 Hopper", "Under_score",
             "Underxscore", "Back\\slash"]
    ids = {name: (await factory.doctor(name=name))["id"] for name in names}
    await factory.patient(name="Ada Patient")

    async def search(q: str) -> list[str]:
        response = await client.get("/doctors", params={"q": q})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return [d["name"] for d in body["items"]]

    assert await search("ada") == ["Ada Lovelace", "ADAM Smith"]
    assert await search("LOVELACE") == ["Ada Lovelace"]
    assert await search("0%") == ["Grace 100% Hopper"]
    assert await search("%") == ["Grace 100% Hopper"]
    assert await search("r_s") == ["Under_score"]
    assert await search("_") == ["Under_score"]
    assert await search("\\") == ["Back\\slash"]
    assert await search("nobody") == []
    assert len(await search("")) == len(names)  # an empty q is no filter
    found = (await client.get("/doctors", params={"q": "Hopper", "limit": 1, "offset": 1})).json()
    assert found["total"] == 2 and [d["id"] for d in found["items"]] == [ids["Grace 1000 Hopper"]]


async def test_specialty_is_given_at_registration_by_doctors_only_and_filters_the_list(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    heart = await factory.doctor(specialty="  Cardiology ")
    assert heart["specialty"] == "Cardiology"
    skin = await factory.doctor(specialty="Dermatology")
    plain = await factory.doctor()
    assert plain["specialty"] is None

    refused = await client.post("/auth/register", json={"email": "pat-spec@clinic.example", "name": "P",
                                                         "role": "Patient", "password": "password123",
                                                         "specialty": "Cardiology"})
    problem(refused, 400, "specialty")
    with mysql.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) AS n FROM users WHERE email = 'pat-spec@clinic.example'")
        assert cursor.fetchone()["n"] == 0

    cardiology = (await client.get("/doctors", params={"specialty": "Cardiology"})).json()
    assert [d["id"] for d in cardiology["items"]] == [heart["id"]] and cardiology["total"] == 1
    assert cardiology["items"][0]["specialty"] == "Cardiology"
    both = (await client.get("/doctors", params={"specialty": "Dermatology", "q": skin["name"]})).json()
    assert [d["id"] for d in both["items"]] == [skin["id"]]
    assert (await client.get("/doctors", params={"specialty": "Dermatology", "q": heart["name"]})).json()[
        "total"] == 0
    assert (await client.get("/doctors", params={"specialty": "Oncology"})).json()["items"] == []


async def test_a_doctor_changes_their_specialty_with_patch_me(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor(specialty="Cardiology")
    patient = await factory.patient()

    response = await client.patch("/doctors/me", headers=doctor.headers, json={"specialty": " Neurology  "})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"id": doctor["id"], "name": doctor["name"], "specialty": "Neurology", "timezone": "UTC",
                    "created_at": doctor["created_at"]}
    with mysql.cursor() as cursor:
        cursor.execute("SELECT specialty FROM users WHERE id = %s", (doctor["id"],))
        assert cursor.fetchone()["specialty"] == "Neurology"
    listed = (await client.get("/doctors", params={"specialty": "Neurology"})).json()
    assert [d["id"] for d in listed["items"]] == [doctor["id"]]
    assert (await client.get("/doctors", params={"specialty": "Cardiology"})).json()["total"] == 0

    cleared = await client.patch("/doctors/me", headers=doctor.headers, json={"specialty": None})
    assert cleared.status_code == 200 and cleared.json()["specialty"] is None
    assert (await client.get(f"/doctors/{doctor['id']}")).json()["specialty"] is None

    problem(await client.patch("/doctors/me", headers=doctor.headers, json={"specialty": "   "}), 400)
    problem(await client.patch("/doctors/me", headers=doctor.headers, json={"specialty": "x" * 101}), 400)
    problem(await client.patch("/doctors/me", headers=patient.headers, json={"specialty": "Neurology"}), 403)
    unauthenticated = await client.patch("/doctors/me", json={"specialty": "Neurology"})
    problem(unauthenticated, 401)
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")
    with mysql.cursor() as cursor:
        cursor.execute("SELECT specialty FROM users WHERE id = %s", (patient["id"],))
        assert cursor.fetchone()["specialty"] is None


async def test_get_doctor_is_the_profile_and_404_for_unknown_ids_and_patients(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor = await factory.doctor(specialty="Pediatrics")
    patient = await factory.patient()

    response = await client.get(f"/doctors/{doctor['id']}")
    assert response.status_code == 200, response.text
    # a public profile: the doctor's login email is theirs to see at /auth/me, not everyone's
    assert response.json() == {"id": doctor["id"], "name": doctor["name"], "specialty": "Pediatrics",
                               "timezone": "UTC", "created_at": doctor["created_at"]}
    assert response.json()["created_at"].endswith("Z")
    problem(await client.get(f"/doctors/{doctor['id'] + 10_000}"), 404)
    problem(await client.get(f"/doctors/{patient['id']}"), 404)


# --- publishing windows -------------------------------------------------------------------------------------

async def test_a_doctor_publishes_a_window(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    response = await post_window(client, doctor, interval(at(9), at(12)))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {"id": body["id"], "doctor_id": doctor["id"], **interval(at(9), at(12))}
    assert body["start_time"].endswith("Z") and body["end_time"].endswith("Z")
    with mysql.cursor() as cursor:
        cursor.execute("SELECT doctor_id, start_time, end_time FROM availabilities WHERE id = %s",
                       (body["id"],))
        assert cursor.fetchone() == {"doctor_id": doctor["id"], "start_time": naive(at(9)),
                                     "end_time": naive(at(12))}


async def test_only_a_doctor_publishes_windows(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    patient = await factory.patient()
    problem(await post_window(client, patient, interval(at(9), at(10))), 403)
    problem(await client.post("/doctors/availability", json=interval(at(9), at(10))), 401)
    with mysql.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) AS n FROM availabilities")
        assert cursor.fetchone()["n"] == 0


async def test_window_rules_end_after_start_in_the_future_at_most_24_hours(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    now = datetime.now(UTC).replace(microsecond=0)

    problem(await post_window(client, doctor, interval(at(10), at(9))), 400, "end_time")
    problem(await post_window(client, doctor, interval(at(10), at(10))), 400, "end_time")
    problem(await post_window(client, doctor, interval(now - H, now + H)), 400, "start_time")
    problem(await post_window(client, doctor, interval(now - 2 * H, now - H)), 400, "start_time")
    too_long = interval(at(0), at(24) + timedelta(seconds=1))
    problem(await post_window(client, doctor, too_long), 400, "end_time")
    problem(await post_window(client, doctor, {"start_time": iso(at(9))}), 400)
    problem(await post_window(client, doctor, {**interval(at(9), at(10)), "extra": 1}), 400)
    problem(await post_window(client, doctor, {"start_time": "tomorrow", "end_time": iso(at(10))}), 400)
    assert window_rows(mysql, doctor["id"]) == []

    exactly_a_day = await post_window(client, doctor, interval(at(0), at(24)))
    assert exactly_a_day.status_code == 201, exactly_a_day.text
    assert window_rows(mysql, doctor["id"]) == [(naive(at(0)), naive(at(24)))]


async def test_times_are_rfc3339_in_and_out_and_stored_in_utc(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    kathmandu = timezone(timedelta(hours=5, minutes=45))
    start, end = at(9).astimezone(kathmandu), at(10).astimezone(kathmandu)
    assert start.isoformat().endswith("T14:45:00+05:45")

    offset = await post_window(client, doctor, {"start_time": start.isoformat(), "end_time": end.isoformat()})
    assert offset.status_code == 201, offset.text
    assert (offset.json()["start_time"], offset.json()["end_time"]) == (iso(at(9)), iso(at(10)))

    no_offset = await post_window(client, doctor, {"start_time": naive(at(11)).isoformat(),
                                                   "end_time": naive(at(12)).isoformat()})
    assert no_offset.status_code == 201, no_offset.text
    assert (no_offset.json()["start_time"], no_offset.json()["end_time"]) == (iso(at(11)), iso(at(12)))

    assert window_rows(mysql, doctor["id"]) == [(naive(at(9)), naive(at(10))), (naive(at(11)), naive(at(12)))]
    listed = (await client.get(f"/doctors/{doctor['id']}/availability",
                               params={"from": start.isoformat(), "to": iso(at(24))})).json()
    assert [(w["start_time"], w["end_time"]) for w in listed] == [(iso(at(9)), iso(at(10))),
                                                                  (iso(at(11)), iso(at(12)))]


async def test_overlapping_an_own_window_is_a_409_naming_it_touching_and_other_doctors_are_fine(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other = await factory.doctor(), await factory.doctor()
    first = await factory.window(doctor, at(9), at(10))

    for start, end in [(at(9), at(10)), (at(9.5), at(10.5)), (at(8.5), at(9.5)), (at(8), at(11)),
                       (at(9.25), at(9.75))]:
        body = problem(await post_window(client, doctor, interval(start, end)), 409)
        assert body["conflicting_window"] == {"id": first["id"], **interval(at(9), at(10))}

    after = await factory.window(doctor, at(10), at(11))
    before = await factory.window(doctor, at(8), at(9))
    assert (after["start_time"], before["end_time"]) == (iso(at(10)), iso(at(9)))
    await factory.window(other, at(9), at(10))  # the same hours, another doctor

    body = problem(await post_window(client, doctor, interval(at(10.5), at(12))), 409)
    assert body["conflicting_window"] == {"id": after["id"], **interval(at(10), at(11))}
    assert window_rows(mysql, doctor["id"]) == [(naive(at(h)), naive(at(h + 1))) for h in (8, 9, 10)]
    assert window_rows(mysql, other["id"]) == [(naive(at(9)), naive(at(10)))]


async def test_an_array_of_windows_is_added_all_or_none(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    created = await post_window(client, doctor, [interval(at(9), at(10)), interval(at(10), at(11)),
                                                 interval(at(9, 3), at(17, 3))])
    assert created.status_code == 201, created.text
    body = created.json()
    assert [(w["doctor_id"], w["start_time"], w["end_time"]) for w in body] == [
        (doctor["id"], iso(at(9)), iso(at(10))), (doctor["id"], iso(at(10)), iso(at(11))),
        (doctor["id"], iso(at(9, 3)), iso(at(17, 3)))]
    assert len({w["id"] for w in body}) == 3
    stored = window_rows(mysql, doctor["id"])
    assert len(stored) == 3

    # The last one overlaps a published window: nothing of the array is kept.
    conflict = problem(await post_window(client, doctor, [interval(at(13), at(14)), interval(at(15), at(16)),
                                                          interval(at(10.5), at(12))]), 409)
    assert conflict["conflicting_window"] == {"id": body[1]["id"], **interval(at(10), at(11))}
    assert window_rows(mysql, doctor["id"]) == stored

    # Two of the array overlap each other.
    problem(await post_window(client, doctor, [interval(at(13), at(14)), interval(at(15), at(16)),
                                               interval(at(13.5), at(14.5))]), 409)
    assert window_rows(mysql, doctor["id"]) == stored

    problem(await post_window(client, doctor, []), 400)
    hourly = [interval(at(h, 5), at(h + 1, 5)) for h in range(101)]
    problem(await post_window(client, doctor, hourly), 400)
    assert window_rows(mysql, doctor["id"]) == stored
    hundred = await post_window(client, doctor, hourly[:100])
    assert hundred.status_code == 201, hundred.text
    assert len(hundred.json()) == 100 and len(window_rows(mysql, doctor["id"])) == 103
    stored = window_rows(mysql, doctor["id"])
    backwards = [interval(at(13), at(14)), interval(at(16), at(15))]
    invalid = problem(await post_window(client, doctor, backwards), 400)
    assert [e["field"] for e in invalid["errors"]] == ["[1].end_time"]
    assert window_rows(mysql, doctor["id"]) == stored


# --- availability and free intervals ------------------------------------------------------------------------

async def test_availability_lists_windows_with_free_intervals_that_cancelling_frees_again(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor = await factory.doctor()
    ada, bob = await factory.patient(), await factory.patient()
    window = await factory.window(doctor, at(9), at(12))
    late = await factory.window(doctor, at(14), at(15))
    ten = await factory.booked(ada, doctor["id"], at(10), at(10.5))
    await factory.booked(bob, doctor["id"], at(11), at(11.5))
    await factory.booked(ada, doctor["id"], at(14), at(15))

    async def availability() -> list[dict[str, Any]]:
        response = await client.get(f"/doctors/{doctor['id']}/availability",
                                    params={"from": iso(day()), "to": iso(day(3))})
        assert response.status_code == 200, response.text
        return response.json()

    def local(start: datetime, end: datetime) -> dict[str, str]:  # a doctor in UTC: the same instants
        return {"local_start_time": iso(start), "local_end_time": iso(end)}

    assert await availability() == [
        {"id": window["id"], "doctor_id": doctor["id"], **interval(at(9), at(12)), **local(at(9), at(12)),
         "free": [interval(at(9), at(10)), interval(at(10.5), at(11)), interval(at(11.5), at(12))]},
        {"id": late["id"], "doctor_id": doctor["id"], **interval(at(14), at(15)), **local(at(14), at(15)),
         "free": []},
    ]

    await cancel(client, ada, ten)
    assert (await availability())[0]["free"] == [interval(at(9), at(11)), interval(at(11.5), at(12))]


async def test_availability_is_limited_to_the_range_and_starts_now_by_default(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    now = datetime.now(UTC).replace(microsecond=0)
    insert_window(mysql, doctor["id"], now - 3 * H, now - H)  # over
    running = insert_window(mysql, doctor["id"], now - H, now + H)
    day2 = await factory.window(doctor, at(9, 2), at(10, 2))
    day4 = await factory.window(doctor, at(9, 4), at(10, 4))
    url = f"/doctors/{doctor['id']}/availability"

    default = (await client.get(url)).json()
    assert [w["id"] for w in default] == [running, day2["id"], day4["id"]]
    assert default[0]["free"] == [interval(now - H, now + H)]

    ranged = (await client.get(url, params={"from": iso(day(3)), "to": iso(day(5))})).json()
    assert [w["id"] for w in ranged] == [day4["id"]]
    touching = (await client.get(url, params={"from": iso(at(10, 2)), "to": iso(at(9, 4))})).json()
    assert touching == []  # [from, to) is half-open on both sides
    only_to = (await client.get(url, params={"to": iso(day(3))})).json()
    assert [w["id"] for w in only_to] == [running, day2["id"]]

    problem(await client.get(url, params={"from": iso(day(3)), "to": iso(day(2))}), 400, "to")
    problem(await client.get(url, params={"from": iso(day(2)), "to": iso(day(2) + timedelta(days=63))}),
            400, "to")
    problem(await client.get(url, params={"from": "not a time"}), 400)


async def test_availability_of_an_unknown_doctor_is_404_and_of_one_without_windows_is_empty(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor = await factory.doctor()
    patient = await factory.patient()
    response = await client.get(f"/doctors/{doctor['id']}/availability")
    assert response.status_code == 200 and response.json() == []
    problem(await client.get(f"/doctors/{doctor['id'] + 10_000}/availability"), 404)
    problem(await client.get(f"/doctors/{patient['id']}/availability"), 404)


# --- slots --------------------------------------------------------------------------------------------------

async def slots(client: httpx.AsyncClient, doctor_id: int, **params: Any) -> list[tuple[str, str, int]]:
    response = await client.get(f"/doctors/{doctor_id}/slots", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["doctor_id"] == doctor_id and body["duration"] == int(params.get("duration", 30))
    return [(s["start_time"], s["end_time"], s["availability_id"]) for s in body["slots"]]


async def test_slots_keep_the_window_grid_and_skip_confirmed_appointments(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor = await factory.doctor()
    patient = await factory.patient()
    window = await factory.window(doctor, at(9), at(12))
    appointment = await factory.booked(patient, doctor["id"], at(10.25), at(10.75))
    span = {"from": iso(day()), "to": iso(day(3))}

    expected = [(iso(at(h)), iso(at(h + 0.5)), window["id"]) for h in (9, 9.5, 11, 11.5)]
    assert await slots(client, doctor["id"], duration=30, **span) == expected
    assert await slots(client, doctor["id"], **span) == expected  # 30 minutes by default
    assert await slots(client, doctor["id"], duration=60, **span) == [
        (iso(at(9)), iso(at(10)), window["id"]), (iso(at(11)), iso(at(12)), window["id"])]

    await cancel(client, patient, appointment)
    assert await slots(client, doctor["id"], duration=30, **span) == [
        (iso(at(9 + k / 2)), iso(at(9.5 + k / 2)), window["id"]) for k in range(6)]


async def test_a_slot_never_crosses_a_window_end_nor_starts_in_the_past(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    first = await factory.window(doctor, at(9), at(10))
    second = await factory.window(doctor, at(10), at(11))  # touching: still two grids
    span = {"from": iso(day()), "to": iso(day(3))}

    assert await slots(client, doctor["id"], duration=45, **span) == [
        (iso(at(9)), iso(at(9.75)), first["id"]), (iso(at(10)), iso(at(10.75)), second["id"])]
    assert await slots(client, doctor["id"], duration=90, **span) == []
    assert await slots(client, doctor["id"], duration=60, **span) == [
        (iso(at(9)), iso(at(10)), first["id"]), (iso(at(10)), iso(at(11)), second["id"])]
    # Only slots wholly inside [from, to).
    assert await slots(client, doctor["id"], duration=30, **{"from": iso(at(9.25)), "to": iso(at(10.5))}) == [
        (iso(at(9.5)), iso(at(10)), first["id"]), (iso(at(10)), iso(at(10.5)), second["id"])]

    now = datetime.now(UTC).replace(microsecond=0)
    running = insert_window(mysql, doctor["id"], now - 50 * M, now + 70 * M)
    assert await slots(client, doctor["id"], duration=30, to=iso(now + 2 * H)) == [
        (iso(now + 10 * M), iso(now + 40 * M), running), (iso(now + 40 * M), iso(now + 70 * M), running)]


async def test_slot_query_bounds(client: httpx.AsyncClient, factory: Factory) -> None:
    doctor = await factory.doctor()
    await factory.window(doctor, at(0), at(24))
    url = f"/doctors/{doctor['id']}/slots"
    span = {"from": iso(day()), "to": iso(day(3))}

    problem(await client.get(url, params={**span, "duration": 4}), 400, "duration")
    problem(await client.get(url, params={**span, "duration": 481}), 400, "duration")
    problem(await client.get(url, params={**span, "duration": "half an hour"}), 400)
    assert len(await slots(client, doctor["id"], duration=5, **span)) == 24 * 12
    assert len(await slots(client, doctor["id"], duration=480, **span)) == 3

    problem(await client.get(url, params={"from": iso(day(3)), "to": iso(day(2))}), 400, "to")
    problem(await client.get(url, params={"from": iso(day(2)), "to": iso(day(2))}), 400, "to")
    past_62_days = day(1) + timedelta(days=62, seconds=1)
    problem(await client.get(url, params={"from": iso(day(1)), "to": iso(past_62_days)}), 400, "to")
    problem(await client.get(url, params={"to": iso(day(70))}), 400, "to")
    assert len(await slots(client, doctor["id"], duration=60,
                           **{"from": iso(day(1)), "to": iso(day(1) + timedelta(days=62))})) == 24

    problem(await client.get(f"/doctors/{doctor['id'] + 10_000}/slots"), 404)
    empty = await factory.doctor()
    assert await slots(client, empty["id"]) == []


async def test_schedule_reads_are_cached_for_at_most_a_second_when_no_change_is_announced(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """A window written behind the API's back announces nothing: the cached answer stands, for a second at most
    (service/schedule.py)."""
    doctor = await factory.doctor()
    window = await factory.window(doctor, at(9), at(10))
    span = {"from": iso(day()), "to": iso(day(3))}
    before = [(iso(at(9)), iso(at(10)), window["id"])]
    assert await slots(client, doctor["id"], duration=60, **span) == before
    unannounced = insert_window(mysql, doctor["id"], at(11), at(12))
    assert await slots(client, doctor["id"], duration=60, **span) == before  # from the cache
    await asyncio.sleep(1.1)
    assert await slots(client, doctor["id"], duration=60, **span) == before + [
        (iso(at(11)), iso(at(12)), unannounced)]


async def test_every_schedule_change_shows_in_the_next_read_of_every_api_process(
    factory: Factory, stack: dict,
) -> None:
    """Windows added or withdrawn, a booking confirmed, an appointment cancelled: each retires the cached reads
    at once in the process that made it and within moments in the others, long before the cache would expire."""
    doctor, patient = await factory.doctor(), await factory.patient()
    span = {"from": iso(day()), "to": iso(day(3)), "duration": 60}
    async with httpx.AsyncClient(base_url=stack["apis"][0]) as here, \
            httpx.AsyncClient(base_url=stack["apis"][1]) as there:

        async def everywhere(expected: list) -> None:
            assert await slots(here, doctor["id"], **span) == expected  # the process that made the change
            deadline = time.monotonic() + 0.5
            while (seen := await slots(there, doctor["id"], **span)) != expected:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)

        await everywhere([])
        window = await factory.window(doctor, at(9), at(11), client=here)
        await everywhere([(iso(at(9)), iso(at(10)), window["id"]), (iso(at(10)), iso(at(11)), window["id"])])
        appointment = await factory.booked(patient, doctor["id"], at(9), at(10), client=here)
        await everywhere([(iso(at(10)), iso(at(11)), window["id"])])
        assert (await here.delete(f"/appointments/{appointment['id']}", headers=patient.headers)).status_code == 200
        await everywhere([(iso(at(9)), iso(at(10)), window["id"]), (iso(at(10)), iso(at(11)), window["id"])])
        withdrawn = await here.delete(f"/doctors/availability/{window['id']}", headers=doctor.headers)
        assert withdrawn.status_code == 204
        await everywhere([])


# --- withdrawing windows ------------------------------------------------------------------------------------

async def test_deleting_a_window(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, other = await factory.doctor(), await factory.doctor()
    patient = await factory.patient()
    window = await factory.window(doctor, at(9), at(10))
    kept = await factory.window(doctor, at(11), at(12))
    url = f"/doctors/availability/{window['id']}"

    problem(await client.delete(url, headers=other.headers), 404)
    problem(await client.delete(url, headers=patient.headers), 403)
    problem(await client.delete(url), 401)
    problem(await client.delete(f"/doctors/availability/{kept['id'] + 10_000}", headers=doctor.headers), 404)
    assert len(window_rows(mysql, doctor["id"])) == 2

    response = await client.delete(url, headers=doctor.headers)
    assert response.status_code == 204 and response.content == b""
    assert window_rows(mysql, doctor["id"]) == [(naive(at(11)), naive(at(12)))]
    problem(await client.delete(url, headers=doctor.headers), 404)


async def test_a_window_with_a_confirmed_appointment_cannot_be_deleted_until_it_is_cancelled(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    patient = await factory.patient()
    window = await factory.window(doctor, at(9), at(12))
    appointment = await factory.booked(patient, doctor["id"], at(11.5), at(12))
    url = f"/doctors/availability/{window['id']}"

    problem(await client.delete(url, headers=doctor.headers), 409)
    assert window_rows(mysql, doctor["id"]) == [(naive(at(9)), naive(at(12)))]

    await cancel(client, patient, appointment)
    response = await client.delete(url, headers=doctor.headers)
    assert response.status_code == 204, response.text
    assert window_rows(mysql, doctor["id"]) == []


# --- the doctor's schedule ----------------------------------------------------------------------------------

async def test_my_appointments_is_the_doctors_schedule_by_start_time(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor, other = await factory.doctor(), await factory.doctor()
    ada, bob = await factory.patient(name="Ada Patient"), await factory.patient(name="Bob Patient")
    await factory.window(doctor, at(9), at(17))
    await factory.window(doctor, at(9, 4), at(17, 4))
    await factory.window(other, at(9), at(17))
    late = await factory.booked(ada, doctor["id"], at(15), at(16))
    early = await factory.booked(bob, doctor["id"], at(9), at(9.5))
    later_day = await factory.booked(bob, doctor["id"], at(10, 4), at(11, 4))
    middle = await factory.booked(ada, doctor["id"], at(11), at(11.5))
    await factory.booked(ada, other["id"], at(13), at(14))
    await cancel(client, ada, middle)
    url = "/doctors/my-appointments"

    async def schedule(**params: Any) -> dict[str, Any]:
        response = await client.get(url, headers=doctor.headers, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    page = await schedule()
    assert (page["total"], page["limit"], page["offset"]) == (4, 50, 0)
    assert [a["id"] for a in page["items"]] == [early["id"], middle["id"], late["id"], later_day["id"]]
    assert [a["patient_name"] for a in page["items"]] == ["Bob Patient", "Ada Patient", "Ada Patient",
                                                          "Bob Patient"]
    assert {a["doctor_id"] for a in page["items"]} == {doctor["id"]}
    assert {a["doctor_name"] for a in page["items"]} == {doctor["name"]}
    assert page["items"][0]["start_time"] == iso(at(9)) and page["items"][0]["end_time"] == iso(at(9.5))
    assert [a["status"] for a in page["items"]] == ["confirmed", "cancelled", "confirmed", "confirmed"]

    second = await schedule(limit=2, offset=2)
    assert (second["total"], second["limit"], second["offset"]) == (4, 2, 2)
    assert [a["id"] for a in second["items"]] == [late["id"], later_day["id"]]

    confirmed = await schedule(status="confirmed")
    assert confirmed["total"] == 3 and [a["id"] for a in confirmed["items"]] == [
        early["id"], late["id"], later_day["id"]]
    assert [a["id"] for a in (await schedule(status="cancelled"))["items"]] == [middle["id"]]

    one_day = await schedule(**{"from": iso(day()), "to": iso(day(3))})
    assert one_day["total"] == 3
    assert [a["id"] for a in one_day["items"]] == [early["id"], middle["id"], late["id"]]
    # Overlap with [from, to): an appointment running across `from` is in, one starting at `to` is out.
    around = await schedule(**{"from": iso(at(9.25)), "to": iso(at(15))}, status="confirmed")
    assert [a["id"] for a in around["items"]] == [early["id"]]
    assert [a["id"] for a in (await schedule(**{"from": iso(day(3))}))["items"]] == [later_day["id"]]

    problem(await client.get(url, headers=doctor.headers, params={"status": "pending"}), 400, "status")
    problem(await client.get(url, headers=doctor.headers, params={"limit": 201}), 400, "limit")
    problem(await client.get(url, headers=doctor.headers, params={"from": iso(day(3)), "to": iso(day(2))}),
            400, "to")
    problem(await client.get(url, headers=ada.headers), 403)
    problem(await client.get(url), 401)

