"""The directory's next free slot: "the first cardiologist free after Monday 8:00", in a few queries for any
number of doctors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pymysql
import pytest

from service.api.schedule_cache import ScheduleVersions
from service.core import directory as directory_module
from service.core.db import Database
from service.core.directory import DirectoryCache, search
from tests.factory import Factory, User, iso

H = timedelta(hours=1)


def next_monday() -> datetime:
    """Midnight UTC of a Monday more than a week away (so every weekday of that week is in the future)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=((7 - today.weekday()) % 7 or 7) + 7)


def wall(day: datetime, clock: str, zone: str) -> datetime:
    """That day's wall-clock time in `zone`, as a UTC instant."""
    hours, minutes = map(int, clock.split(":"))
    local = datetime(day.year, day.month, day.day, hours, minutes, tzinfo=ZoneInfo(zone))
    return local.astimezone(UTC)


async def directory(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/doctors", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def cardiologist(factory: Factory, name: str, timezone: str, hours: list[tuple[int, str, str]]) -> User:
    doctor = await factory.doctor(name=name, specialty="Cardiology", timezone=timezone)
    await factory.weekly_hours(doctor, hours)
    return doctor


async def test_the_first_cardiologist_free_after_monday_8(client: httpx.AsyncClient, factory: Factory) -> None:
    monday = next_monday()
    # Berlin opens Monday 09:00 local (08:00 UTC in winter), New York Monday 09:00 local (14:00 UTC), Tokyo
    # Tuesday 09:00 local (Monday 00:00 UTC: before 08:00, so its first slot after is Tuesday's).
    berlin = await cardiologist(factory, "Dr Berlin", "Europe/Berlin", [(1, "09:00", "12:00")])
    new_york = await cardiologist(factory, "Dr New York", "America/New_York", [(1, "09:00", "17:00")])
    tokyo = await cardiologist(factory, "Dr Tokyo", "Asia/Tokyo", [(2, "09:00", "10:00")])
    closed = await cardiologist(factory, "Dr Closed", "UTC", [])
    await factory.doctor(name="Dr Skin", specialty="Dermatology")  # not a cardiologist
    after = monday + 8 * H

    ranked = await directory(client, specialty="Cardiology", available_after=iso(after), sort="next_available")
    assert [d["id"] for d in ranked] == [berlin["id"], new_york["id"], tokyo["id"], closed["id"]]
    first = ranked[0]["next_available_slot"]
    opens = wall(monday, "09:00", "Europe/Berlin")  # 08:00 UTC in winter, 07:00 in summer
    assert first["start_time"] == iso(max(opens, after))
    assert datetime.fromisoformat(first["local_start_time"]) == max(opens, after)
    assert datetime.fromisoformat(first["local_start_time"]).utcoffset() == opens.astimezone(
        ZoneInfo("Europe/Berlin")).utcoffset()
    assert ranked[1]["next_available_slot"]["start_time"] == iso(wall(monday, "09:00", "America/New_York"))
    assert ranked[3]["next_available_slot"] is None  # no hours at all: last
    assert ranked[2]["next_available_slot"]["local_start_time"].endswith("T09:00:00+09:00")

    # By name, every doctor still carries its slot.
    by_name = await directory(client, specialty="Cardiology", available_after=iso(after))
    assert [d["name"] for d in by_name] == ["Dr Berlin", "Dr Closed", "Dr New York", "Dr Tokyo"]
    assert {d["id"]: d["next_available_slot"] for d in by_name}[berlin["id"]] == first
    # Without the new parameters, the plain directory has no slot field at all.
    assert "next_available_slot" not in (await directory(client, specialty="Cardiology"))[0]


async def test_booked_time_time_off_and_a_types_rules_move_the_next_free_slot(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    monday = next_monday()
    early = await cardiologist(factory, "Dr Early", "UTC", [(1, "08:00", "09:00"), (1, "10:00", "11:00")])
    late = await cardiologist(factory, "Dr Late", "UTC", [(1, "08:30", "12:00")])
    patient = await factory.patient()
    for doctor in (early, late):
        await factory.appointment_type(doctor, name="Check-up", duration_minutes=30, buffer_after_minutes=30)
    # Early's first hour is taken (two bookings), so its next free slot is 10:00.
    await factory.booked(patient, early["id"], monday + 8 * H, monday + 8.5 * H)
    await factory.booked(await factory.patient(), early["id"], monday + 8.5 * H, monday + 9 * H)
    after = iso(monday + 7 * H)
    ranked = await directory(client, specialty="Cardiology", available_after=after, sort="next_available")
    assert [(d["name"], d["next_available_slot"]["start_time"]) for d in ranked] == [
        ("Dr Late", iso(monday + 8.5 * H)), ("Dr Early", iso(monday + 10 * H))]

    # Late takes the morning off: it is now after Early.
    await factory.time_off(late, monday, monday + 11 * H)
    ranked = await directory(client, specialty="Cardiology", available_after=after, sort="next_available")
    assert [(d["name"], d["next_available_slot"]["start_time"]) for d in ranked] == [
        ("Dr Early", iso(monday + 10 * H)), ("Dr Late", iso(monday + 11 * H))]

    # A type with a 30-minute buffer after: Late's 11:00-11:30 leaves room (the buffer may reach past the hours).
    typed = await directory(client, specialty="Cardiology", available_after=after, sort="next_available",
                            appointment_type_name="Check-up")
    assert [(d["name"], d["next_available_slot"]["end_time"]) for d in typed] == [
        ("Dr Early", iso(monday + 10.5 * H)), ("Dr Late", iso(monday + 11.5 * H))]
    # Only doctors offering an active type of that name are listed.
    assert await directory(client, specialty="Cardiology", appointment_type_name="Surgery") == []


async def test_the_directory_reads_a_few_times_whatever_the_number_of_doctors(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """No round trip per doctor: the statements MariaDB runs for one sorted directory read of 60 doctors are a
    handful (a loop over doctors would run at least 60, every time). Asked about three weeks ahead, beyond what the
    API's cache keeps (the coming COVERED days), so every read goes to MySQL."""
    monday = next_monday()
    for n in range(60):
        await cardiologist(factory, f"Dr {n:02}", "Europe/Berlin", [(1 + n % 5, "09:00", "12:00")])

    def statements() -> int:
        with mysql.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cursor.fetchone()["Value"])

    await directory(client, specialty="Cardiology", sort="next_available", limit=5)  # warm the connections
    # The server counts every session's statements (other test processes', the workers' sweeps): the read's own
    # count is the same every time, so the fewest seen over a few reads is it, plus whatever else ran then.
    counts = []
    for _ in range(20):
        before = statements()
        ranked = await directory(client, specialty="Cardiology", available_after=iso(monday + 21 * 24 * H),
                                 sort="next_available", limit=5)
        counts.append(statements() - before - 1)  # less our own SHOW
        assert len(ranked) == 5 and all(d["next_available_slot"] for d in ranked)
        if counts[-1] < 30:
            break
    ran = min(counts)
    assert 0 < ran < 30, f"{ran} statements for one directory read of 60 doctors (seen: {counts})"


async def test_directory_input_is_checked(client: httpx.AsyncClient) -> None:
    for params, field in (({"available_after": "monday"}, "available_after"), ({"sort": "distance"}, "sort"),
                          ({"appointment_type_name": ""}, "appointment_type_name")):
        response = await client.get("/doctors", params=params)
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["field"] == field, response.text


def first_summer_monday_in_berlin() -> datetime:
    """Midnight UTC of the first Monday of the next Berlin summer time (a Monday at least a week away)."""
    berlin = ZoneInfo("Europe/Berlin")
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=7)
    while not (day.isoweekday() == 1 and day.astimezone(berlin).utcoffset() == timedelta(hours=2)
               and (day - timedelta(days=7)).astimezone(berlin).utcoffset() == timedelta(hours=1)):
        day += timedelta(days=1)
    return day.replace(hour=0)


async def test_the_readmes_worked_example(client: httpx.AsyncClient, factory: Factory) -> None:
    """README, "Clinic schedules": Dr Weber's Berlin week and a first visit with buffers, as the README says."""
    weber = await factory.doctor(name="Dr Weber", specialty="General practice", timezone="Europe/Berlin")
    await factory.weekly_hours(weber, [(day, start, end) for day in (1, 2) for start, end in
                                       (("09:00", "12:00"), ("14:00", "17:00"))])
    first_visit = await factory.appointment_type(weber, name="First visit", duration_minutes=40,
                                                 buffer_before_minutes=10, buffer_after_minutes=10,
                                                 min_notice_minutes=120)
    monday = first_summer_monday_in_berlin()  # 2027-03-29 in the README
    day = monday.date().isoformat()

    async def morning() -> list[str]:
        response = await client.get(f"/doctors/{weber['id']}/slots", params={
            "appointment_type_id": first_visit["id"], "from": iso(monday), "to": iso(monday + 24 * H)})
        assert response.status_code == 200, response.text
        slots = response.json()["slots"]
        assert slots[0]["local_start_time"].endswith("+02:00")
        return [s["local_start_time"][11:16] for s in slots if s["local_start_time"][11:13] < "12"]

    assert await morning() == ["09:00", "09:40", "10:20", "11:00"]
    first = (await client.get(f"/doctors/{weber['id']}/slots", params={
        "appointment_type_id": first_visit["id"], "from": iso(monday), "to": iso(monday + 24 * H)})).json()
    assert first["slots"][0]["start_time"] == f"{day}T07:00:00Z"
    assert first["slots"][0]["local_start_time"] == f"{day}T09:00:00+02:00"
    booked = await client.post("/appointments", headers={**(await factory.patient()).headers, "Prefer": "wait=10"},
                               json={"doctor_id": weber["id"], "appointment_type_id": first_visit["id"],
                                     "start_time": f"{day}T09:40:00+02:00"})
    assert booked.status_code == 201, booked.text
    assert (booked.json()["start_time"], booked.json()["end_time"]) == (f"{day}T07:40:00Z", f"{day}T08:20:00Z")
    assert await morning() == ["11:00"]


async def test_the_coming_weeks_first_directory_cache_follow_every_change_in_every_api_process(
    clients: list[httpx.AsyncClient], factory: Factory,
) -> None:
    """Each API process keeps every doctor's free slots of the coming week (core/directory.py's DirectoryCache): a
    booking, a cancellation and time off, made through one process, move the ranking that the other one answers."""
    booking_api, searching_api = clients
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    specialty = f"Cardiology {tomorrow:%j}-{id(clients)}"  # this test's doctors alone
    first = await factory.doctor(name="Dr First", specialty=specialty)
    second = await factory.doctor(name="Dr Second", specialty=specialty)
    await factory.window(first, tomorrow + 10 * H, tomorrow + 12 * H)
    await factory.window(second, tomorrow + 10.5 * H, tomorrow + 12 * H)
    patient = await factory.patient()

    async def ranking() -> list[tuple[str, str | None]]:
        found = await directory(searching_api, specialty=specialty, available_after=iso(tomorrow + 9 * H),
                                sort="next_available")
        return [(d["name"], (d["next_available_slot"] or {}).get("start_time")) for d in found]

    async def becomes(expected: list[tuple[str, str | None]]) -> None:
        for _ in range(100):  # the other process hears of a change by pub/sub a moment after its commit (not 5 s)
            if (seen := await ranking()) == expected:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the directory still answers {seen}, not {expected}")

    await becomes([("Dr First", iso(tomorrow + 10 * H)), ("Dr Second", iso(tomorrow + 10.5 * H))])
    assert await ranking() == await ranking()  # answered again from the cache: the same
    # A slot starting before the instant asked about is not offered, not even by a few seconds.
    just_after = await directory(searching_api, specialty=specialty, sort="next_available",
                                 available_after=iso(tomorrow + 10 * H + timedelta(seconds=30)))
    assert [(d["name"], d["next_available_slot"]["start_time"]) for d in just_after] == [
        ("Dr First", iso(tomorrow + 10.5 * H)), ("Dr Second", iso(tomorrow + 10.5 * H))]
    taken = [await factory.booked(patient, first["id"], tomorrow + (10 + k / 2) * H, tomorrow + (10.5 + k / 2) * H,
                                  client=booking_api) for k in range(2)]
    await becomes([("Dr Second", iso(tomorrow + 10.5 * H)), ("Dr First", iso(tomorrow + 11 * H))])
    cancelled = await booking_api.delete(f"/appointments/{taken[0]['id']}", headers=patient.headers)
    assert cancelled.status_code == 200, cancelled.text
    await becomes([("Dr First", iso(tomorrow + 10 * H)), ("Dr Second", iso(tomorrow + 10.5 * H))])
    await factory.time_off(first, tomorrow, tomorrow + 2 * 24 * H, cancel_appointments=True, reason="Away")
    await becomes([("Dr Second", iso(tomorrow + 10.5 * H)), ("Dr First", None)])
    # A doctor who registers joins the listing at once (last: no hours yet), in every process.
    await factory.doctor(name="Dr Third", specialty=specialty)
    await becomes([("Dr Second", iso(tomorrow + 10.5 * H)), ("Dr First", None), ("Dr Third", None)])

    # Searching by type name: a type created in one process is found by the other's (cached) listing.
    async def typed_becomes(expected: list[str]) -> None:
        for _ in range(100):
            seen = [d["name"] for d in await directory(searching_api, specialty=specialty, sort="next_available",
                                                       appointment_type_name="Check-up")]
            if seen == expected:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the typed search still answers {seen}, not {expected}")

    await typed_becomes([])
    await factory.appointment_type(second, name="Check-up", duration_minutes=30)
    await typed_becomes(["Dr Second"])
    await factory.appointment_type(first, name="Check-up", duration_minutes=30)
    await typed_becomes(["Dr Second", "Dr First"])

async def test_a_cached_week_ends_when_a_hold_it_read_lapses(
    factory: Factory, db: Database, mysql: pymysql.Connection,
) -> None:
    """A hold's lapse is announced by nobody (the sweep's refill comes later): the cache keeps what it read with a
    live hold no longer than the hold lives. Here the versions never change, so only that lifetime can retire it."""
    cache = DirectoryCache(lambda doctor_id: "same", lambda: "same")
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    specialty = f"Holds {id(cache)}"
    doctor, patient = await factory.doctor(name="Dr Held", specialty=specialty), await factory.patient()
    await factory.window(doctor, tomorrow + 10 * H, tomorrow + 11 * H)
    with mysql.cursor() as cursor:
        cursor.execute("INSERT INTO holds (doctor_id, patient_id, start_time, end_time, expires_at, created_at)"
                       " VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6) + INTERVAL 2 SECOND, UTC_TIMESTAMP(6))",
                       (doctor["id"], patient["id"], tomorrow + 10 * H, tomorrow + 10.5 * H))

    async def first_free() -> str:
        [(_, slot)] = (await search(db, None, specialty, None, (tomorrow + 9 * H).replace(tzinfo=None), True, 20, 0,
                                    cache))[0]
        return slot.start_time.isoformat()

    assert await first_free() == (tomorrow + 10.5 * H).isoformat()  # held
    assert await first_free() == (tomorrow + 10.5 * H).isoformat()  # from the cache
    await asyncio.sleep(2.5)
    assert await first_free() == (tomorrow + 10 * H).isoformat()  # the hold lapsed: read again


async def test_a_sorted_search_answered_from_its_ranking_is_the_long_ways_answer_through_changes(
    factory: Factory, db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search sorted by next free slot is answered from the cache's ranking of its doctors' slots (one sorted array,
    walked from the instant asked about) rather than a lookup per doctor and a sort. Its pages are the long way's,
    at every instant, with ties by name and id, a type's notice and the doctors without a slot; a change reaches
    it through the change log (the doctor is looked up apart) and enough changes make it again."""
    versions = ScheduleVersions()
    cache = DirectoryCache(versions.of, versions.listing, versions)
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    specialty = f"Ranked {id(cache)}"
    doctors = []
    for number, (name, opens, hours) in enumerate([("Dr Ash", 9, 2), ("Dr Birch", 9, 3), ("Dr Birch", 10, 1),
                                                   ("Dr Cedar", 8, 1), ("Dr Elm", 13, 4), ("Dr Fir", 9.5, 6)]):
        doctor = await factory.doctor(name=name, specialty=specialty)
        for day in range(2):
            await factory.window(doctor, tomorrow + (24 * day + opens) * H, tomorrow + (24 * day + opens + hours) * H)
        if number == 4:  # a type of its own with an hour's buffer: its slots are every 90 minutes
            await factory.appointment_type(doctor, name="Consult", duration_minutes=30, buffer_after_minutes=60)
        doctors.append(doctor)
    nobody = await factory.doctor(name="Dr Oak", specialty=specialty)  # no hours: last, by name
    ids = {doctor["id"] for doctor in [*doctors, nobody]}
    long_ways = 0
    long_way = directory_module.next_free_spans

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal long_ways
        long_ways += 1
        return await long_way(*args, **kwargs)

    monkeypatch.setattr(directory_module, "next_free_spans", counted)

    async def page(after: datetime, limit: int, offset: int, type_name: str | None = None,
                   through: DirectoryCache | None = cache) -> list[tuple[int, str | None]]:
        found, total = await search(db, None, specialty, type_name, after.replace(tzinfo=None), True, limit, offset,
                                    through)
        assert total == (len(ids) if type_name is None else 1)
        return [(row["id"], slot and slot.start_time.isoformat()) for row, slot in found]

    async def agrees(instants: list[datetime]) -> int:
        """Every page at these instants is the long way's; how many the ranking answered."""
        answered = 0
        for after in instants:
            for limit, offset in ((1, 0), (3, 0), (2, 3), (7, 0), (20, 0)):
                before = long_ways
                expected = await page(after, limit, offset, through=None)
                ranked_before = long_ways
                assert await page(after, limit, offset) == expected, (after, limit, offset)
                assert ranked_before == before + 1  # the uncached search went the long way
                answered += long_ways == ranked_before
        return answered

    instants = [tomorrow + k * timedelta(minutes=25) for k in range(20, 68)]
    # The ranking answered every page within the six doctors with a slot; those reaching Dr Oak went the long way.
    assert await agrees(instants) == len(instants) * 3
    key = (None, specialty, None)
    made = cache._rankings[key]
    assert await agrees(instants[:5]) and cache._rankings[key] is made  # kept while nothing changes
    made.expires = 0  # its lifetime over: it answers while it is made again in the background
    stale = await page(instants[0], 3, 0)
    assert cache._rankings[key] is made and key in cache._remaking  # answered by it, made again meanwhile
    assert stale == await page(instants[0], 3, 0, through=None)
    for _ in range(100):
        if cache._rankings[key] is not made:
            break
        await asyncio.sleep(0.02)
    assert cache._rankings[key] is not made and await agrees(instants[:5]) == 15
    made = cache._rankings[key]

    # A booking of the soonest doctor and a window of another (as their announcements would) are looked up apart.
    patient = await factory.patient()
    cedar, fir = doctors[3], doctors[5]
    await factory.booked(patient, cedar["id"], tomorrow + 8 * H, tomorrow + 8.5 * H)
    await factory.window(fir, tomorrow + 7 * H, tomorrow + 8 * H)
    versions.changed(cedar["id"])
    versions.changed(fir["id"], listing=False)
    assert await agrees(instants[:12]) and cache._rankings[key] is made
    assert (await page(tomorrow + 7 * H, 2, 0))[0] == (fir["id"], (tomorrow + 7 * H).isoformat())
    # Past MAX_CHANGED changed doctors the ranking is made again; so it is when the listing changes.
    for other in range(directory_module.MAX_CHANGED + 1):
        versions.changed(nobody["id"] + 1000 + other)  # doctors of other listings, not read
    assert await agrees(instants[:3]) and cache._rankings[key] is not made
    # By type: the doctors with a type of that name (one here), by its slots (every 90 minutes).
    typed = [await page(after, 3, 0, "Consult") for after in instants]
    assert typed == [await page(after, 3, 0, "Consult", through=None) for after in instants]
    assert {doctor_id for [(doctor_id, _)] in typed} == {doctors[4]["id"]}
    assert len({slot for [(_, slot)] in typed}) > 3
