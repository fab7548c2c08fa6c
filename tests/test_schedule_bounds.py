"""What one doctor can store is bounded, and so is what reading it costs: the worst schedule an attacker can
build answers in milliseconds, and no query under a doctor's lock scans the doctor's history."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pymysql
import pytest

from service.core.availability import Available, DoctorTime, Taken
from service.core.booking import (
    PATIENTS_A_STATEMENT,
    RANGES_A_STATEMENT,
    range_reads,
    schedule_reads,
)
from service.core.db import render
from service.core.hours import MAX_UPCOMING_TIME_OFF, MAX_WEEKLY_INTERVALS
from service.core.schedule import read_bounds
from service.core.windows import MAX_UPCOMING_WINDOWS
from tests.factory import Factory, at, day, iso

M = timedelta(minutes=1)
FIVE = 5 * M
DAY = timedelta(days=1)
CREATED = datetime(2026, 1, 1)


def naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def insert_rows(mysql: pymysql.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Many rows in a few statements (PyMySQL folds an INSERT … VALUES of placeholders only)."""
    with mysql.cursor() as cursor:
        cursor.executemany(sql, rows)


def fill_with_appointments(mysql: pymysql.Connection, doctor_id: int, patient_id: int, start: datetime,
                           end: datetime, length: timedelta) -> int:
    """Confirmed appointments back to back over [start, end), written straight to the tables; how many."""
    starts = []
    moment = start
    while moment + length <= end:
        starts.append(moment)
        moment += length
    with mysql.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) AS top FROM booking_requests")
        first_id = cursor.fetchone()["top"] + 1
    now = datetime.now(UTC).replace(tzinfo=None)
    insert_rows(mysql, "INSERT INTO booking_requests (id, patient_id, doctor_id, start_time, end_time, status,"
                       " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(first_id + i, patient_id, doctor_id, naive(s), naive(s + length), "confirmed", now)
                 for i, s in enumerate(starts)])
    insert_rows(mysql, "INSERT INTO appointments (booking_request_id, doctor_id, patient_id, start_time, end_time,"
                       " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                [(first_id + i, doctor_id, patient_id, naive(s), naive(s + length), now)
                 for i, s in enumerate(starts)])
    return len(starts)


# --- the worst schedule ---------------------------------------------------------------------------------------

async def test_the_worst_schedule_an_attacker_can_build_answers_in_milliseconds(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """The most one doctor can store in the 62 days one read spans: all the upcoming windows allowed, back to back,
    and every 5 minutes of them booked (the grid makes 5 minutes the shortest appointment). Reads of it, each for a
    new range so no cache answers, take milliseconds, and a /health asked meanwhile is not held up behind them."""
    doctor, patient = await factory.doctor(), await factory.patient()
    first_day = day(2)
    window = 85 * M  # MAX_UPCOMING_WINDOWS of them fill 59 of the 62 days
    last_end = first_day + MAX_UPCOMING_WINDOWS * window
    insert_rows(mysql, "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)"
                       " VALUES (%s, %s, %s, %s)",
                [(doctor["id"], naive(first_day + k * window), naive(first_day + (k + 1) * window), CREATED)
                 for k in range(MAX_UPCOMING_WINDOWS)])
    booked = fill_with_appointments(mysql, doctor["id"], patient["id"], first_day, last_end, FIVE)
    assert booked == MAX_UPCOMING_WINDOWS * 17

    async def read(path: str, shift: int, **params: Any) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = await client.get(f"/doctors/{doctor['id']}/{path}", params={
            "from": iso(first_day + shift * FIVE), "to": iso(last_end - FIVE), "limit": 1000, **params})
        return time.perf_counter() - started, response

    took: dict[str, list[float]] = {"slots": [], "availability": []}
    for shift in range(3):  # a new range each time: the response cache cannot answer
        for path, params in (("slots", {"duration": 5}), ("availability", {})):
            elapsed, response = await read(path, shift, **params)
            assert response.status_code == 200, response.text
            took[path].append(elapsed)
    # Each kind of read at its best of three: unbounded work shows in every one, a busy moment of the machine
    # (the suite's other processes) in one.
    worst = max(min(times) for times in took.values())
    slots = (await read("slots", 3, duration=5))[1].json()["slots"]
    availability = (await read("availability", 4))[1].json()
    assert slots == [] and len(availability) == MAX_UPCOMING_WINDOWS
    assert [free for window in availability for free in window["free"]] == []
    # Generous for a shared machine: the same reads took seconds when they compared every window with every
    # appointment.
    assert worst < 1.0, f"a read of the worst schedule took {worst:.3f} s"

    async def health_while_reading() -> float:
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        assert (await client.get("/health")).status_code == 200
        return time.perf_counter() - started

    reads = [read("slots", 10 + k, duration=5) for k in range(4)]
    *_, health_took = await asyncio.gather(*reads, health_while_reading())
    assert health_took < 1.0, f"/health waited {health_took:.3f} s behind schedule reads"


async def test_slivers_are_refused_windows_and_bookings_keep_the_5_minute_grid(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    for start, end, field in ((at(9), at(9) + timedelta(microseconds=1), "end_time"),
                              (at(9), at(9) + M, "end_time"),
                              (at(9) + M, at(10), "start_time"),
                              (at(9) + timedelta(seconds=30), at(10), "start_time")):
        response = await client.post("/doctors/availability", headers=doctor.headers,
                                     json={"start_time": iso(start), "end_time": iso(end)})
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == field, response.text
        booking = await factory.book(patient, doctor["id"], start, end)
        assert booking.status_code == 400 and booking.json()["errors"][0]["field"] == field, booking.text
    await factory.window(doctor, at(9), at(9) + FIVE)  # the shortest window
    assert (await factory.book(patient, doctor["id"], at(9), at(9) + FIVE, wait=10)).status_code == 201
    with mysql.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) AS n FROM booking_requests")
        assert cursor.fetchone()["n"] == 1
    slots = await client.get(f"/doctors/{doctor['id']}/slots", params={"duration": 7})
    assert slots.status_code == 400 and slots.json()["errors"][0]["field"] == "duration"


async def test_a_doctor_has_at_most_so_many_upcoming_windows(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    doctor = await factory.doctor()
    past, soon = day(-30), day(2)
    # Windows that are over do not count; upcoming ones do, up to the cap.
    insert_rows(mysql, "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)"
                       " VALUES (%s, %s, %s, %s)",
                [(doctor["id"], naive(past + k * FIVE), naive(past + (k + 1) * FIVE), CREATED) for k in range(50)]
                + [(doctor["id"], naive(soon + k * FIVE), naive(soon + (k + 1) * FIVE), CREATED)
                   for k in range(MAX_UPCOMING_WINDOWS - 2)])
    later = soon + timedelta(days=10)
    two = [{"start_time": iso(later + k * FIVE), "end_time": iso(later + (k + 1) * FIVE)} for k in range(2)]
    three = two + [{"start_time": iso(later + 2 * FIVE), "end_time": iso(later + 3 * FIVE)}]
    refused = await client.post("/doctors/availability", headers=doctor.headers, json=three)
    assert refused.status_code == 409 and refused.json()["limit"] == MAX_UPCOMING_WINDOWS, refused.text
    assert (await client.post("/doctors/availability", headers=doctor.headers, json=two)).status_code == 201
    one_more = await client.post("/doctors/availability", headers=doctor.headers, json=three[2])
    assert one_more.status_code == 409, one_more.text


# --- paging ---------------------------------------------------------------------------------------------------

async def test_schedule_reads_are_cut_at_limit_and_link_to_the_rest(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    doctor = await factory.doctor()
    for d in (2, 3, 4):
        await factory.window(doctor, at(9, d), at(12, d))
    span = {"from": iso(day(1)), "to": iso(day(6))}
    everything = (await client.get(f"/doctors/{doctor['id']}/slots", params={**span, "duration": 30})).json()
    assert len(everything["slots"]) == 18 and everything["next_from"] is None

    for path, key, size, total in (("slots", "slots", 4, 18), ("availability", None, 2, 3)):
        seen: list[dict[str, Any]] = []
        url: str | None = f"/doctors/{doctor['id']}/{path}"
        params: dict[str, Any] | None = {**span, "limit": size, **({"duration": 30} if key else {})}
        pages = 0
        while url:
            response = await client.get(url, params=params)
            assert response.status_code == 200, response.text
            items = response.json()[key] if key else response.json()
            assert len(items) <= size
            seen += items
            pages += 1
            link = response.headers.get("link")
            url, params = (link.split(">")[0].lstrip("<"), None) if link else (None, None)
            if key:
                assert (response.json()["next_from"] is None) == (link is None)
        assert len(seen) == total and pages == -(-total // size)
        if key:
            assert seen == everything["slots"]
    too_many = await client.get(f"/doctors/{doctor['id']}/slots", params={"limit": 1001})
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["field"] == "limit"


# --- the decision reads around each request, not between them -------------------------------------------------

def test_a_batch_reads_one_range_per_cluster_of_nearby_requests() -> None:
    t = datetime(2031, 1, 6, 9)
    h = timedelta(hours=1)
    asking = [(start, start + h, 1) for start in
              [t, t + 3 * h, t + timedelta(days=300), t + 2 * h, t + timedelta(days=300, hours=5)]]
    assert [(start, end) for _, start, end, _ in range_reads(9, asking)] == [
        (t, t + 4 * h), (t + timedelta(days=300), t + timedelta(days=300, hours=6))]


def test_each_range_is_read_with_the_patients_asking_in_it_and_statements_stay_within_their_budgets() -> None:
    t = datetime(2031, 1, 6, 9)
    later = t + 3 * DAY
    assert range_reads(7, [(later, later + FIVE, 2), (t, t + M, 1), (t + M, t + FIVE, 3), (later, later + M, 1)]) == [
        (7, t, t + FIVE, (1, 3)), (7, later, later + FIVE, (1, 2))]
    crowded = tuple(range(1000, 1000 + PATIENTS_A_STATEMENT + 1))  # one range asked for by too many patients
    reads = [(1, t, t + FIVE, crowded)] + [(2, t + k * 3 * DAY, t + k * 3 * DAY + FIVE, (k,))
                                           for k in range(1, RANGES_A_STATEMENT + 2)]
    statements = schedule_reads(reads, t)
    terms = [term for _, params in statements for term in params["ranges"]]
    assert [len(params["ranges"]) for _, params in statements] == [1, RANGES_A_STATEMENT, 2]
    assert all(sum(len(term["patient_ids"]) for term in params["ranges"]) <= PATIENTS_A_STATEMENT
               and len(params["ranges"]) <= RANGES_A_STATEMENT for _, params in statements)
    # Every range read, every patient of it with it, and the doctors' hours with their ranges.
    assert sorted({(term["doctor_id"], term["from"]) for term in terms}) == sorted({(d, s) for d, s, _, _ in reads})
    assert sorted(p for term in terms if term["doctor_id"] == 1 for p in term["patient_ids"]) == list(crowded)
    assert [params["doctor_ids"] for _, params in statements] == [(1,), (1, 2), (2,)]


def test_taken_time_merges_and_answers_clashes_by_binary_search() -> None:
    t = datetime(2031, 1, 6, 9)
    taken = Taken([(t, t + FIVE), (t + FIVE, t + 2 * FIVE), (t + 6 * FIVE, t + 7 * FIVE)])
    assert list(zip(taken.starts, taken.ends, strict=True)) == [(t, t + 2 * FIVE), (t + 6 * FIVE, t + 7 * FIVE)]
    assert taken.clash(t + 2 * FIVE, t + 6 * FIVE) is None  # touching both: free
    assert taken.clash(t + 5 * FIVE, t + 6 * FIVE + M) == (t + 6 * FIVE, t + 7 * FIVE)
    taken.take(t + 2 * FIVE, t + 6 * FIVE)
    assert list(zip(taken.starts, taken.ends, strict=True)) == [(t, t + 7 * FIVE)]
    time = DoctorTime([Available(t, t + 12 * FIVE, 1)], [(t + 2 * FIVE, t + 4 * FIVE)])
    assert time.taken.free_in(t, t + 12 * FIVE) == [(t, t + 2 * FIVE), (t + 4 * FIVE, t + 12 * FIVE)]
    found, next_start = time.slots(2 * FIVE, t, t + 12 * FIVE, now=t - M, limit=3)
    assert [s for s, _, _ in found] == [t, t + 4 * FIVE, t + 6 * FIVE] and next_start == t + 8 * FIVE


# --- no query under a doctor's lock scans the doctor's history ------------------------------------------------

@pytest.mark.parametrize(("query", "params"), [
    ("find_overlapping_availability", {"start_time": "window", "end_time": "window_end"}),
    ("find_held_appointment_in_window", {"start_time": "window", "end_time": "window_end"}),
    ("count_upcoming_windows", {"now": "window"}),
    ("list_schedule_in_range", {"from": "window", "to": "window_end"}),
    ("list_schedules_between", {"from": "window", "to": "window_end"}),
])
def test_schedule_queries_read_a_bounded_part_of_the_index(
    mysql: pymysql.Connection, query: str, params: dict[str, str],
) -> None:
    """8,000 windows and appointments of history (the review's case): EXPLAIN's row estimate for each query a
    window change or a decision runs stays small, because each is bounded by time on a (…, start_time) index."""
    with mysql.cursor() as cursor:
        cursor.execute("INSERT INTO users (email, name, role, password_hash, created_at) VALUES "
                       "('history@clinic.example', 'Dr History', 'Doctor', 'x', UTC_TIMESTAMP(6)), "
                       "('patient@clinic.example', 'Pat', 'Patient', 'x', UTC_TIMESTAMP(6))")
        cursor.execute("SELECT id FROM users ORDER BY id")
        doctor_id, patient_id = (row["id"] for row in cursor.fetchall())
    start = datetime(2020, 1, 1)
    insert_rows(mysql, "INSERT INTO availabilities (doctor_id, start_time, end_time, created_at)"
                       " VALUES (%s, %s, %s, %s)",
                [(doctor_id, start + k * FIVE, start + (k + 1) * FIVE, CREATED) for k in range(8000)])
    fill_with_appointments(mysql, doctor_id, patient_id, start, start + 8000 * FIVE, FIVE)
    with mysql.cursor() as cursor:
        cursor.execute("ANALYZE TABLE availabilities, appointments")
        cursor.fetchall()
    window = datetime(2031, 1, 6, 9)
    values = {"window": window, "window_end": window + FIVE}
    bound = {"doctor_id": doctor_id, "patient_ids": (patient_id,), **{k: values[v] for k, v in params.items()}}
    if "from" in bound:
        bound |= read_bounds(bound["from"], bound["to"])
    if query == "list_schedules_between":
        # As much as one statement reads: RANGES_A_STATEMENT ranges, three days apart (so many intervals, not one),
        # of this doctor and three others, with PATIENTS_A_STATEMENT (range, patient) pairs in all.
        per_range = PATIENTS_A_STATEMENT // RANGES_A_STATEMENT
        reads = [(doctor_id + k % 4, window + k * 3 * DAY, window + k * 3 * DAY + FIVE,
                  tuple(patient_id + 10 * k + p for p in range(per_range))) for k in range(RANGES_A_STATEMENT)]
        [(_, bound)] = schedule_reads(reads, window)
        assert len(bound["ranges"]) == RANGES_A_STATEMENT
    with mysql.cursor() as cursor:
        cursor.execute("EXPLAIN " + render(cursor, query, bound))
        plan = cursor.fetchall()
    assert all(step["rows"] is None or int(step["rows"]) < 100 for step in plan), plan
    assert all(step["type"] != "ALL" for step in plan if step["table"] in ("availabilities", "appointments")), plan


async def test_the_worst_weekly_schedule_answers_in_milliseconds_too(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection,
) -> None:
    """The weekly-hours side of the same bound: the most intervals a week may hold, in a zone with DST, every one
    of them cut by time off and booked solid, read over 62 days for a new range each time."""
    doctor = await factory.doctor(timezone="America/New_York")
    per_day = MAX_WEEKLY_INTERVALS // 7  # 14 a day: 25 minutes on, 5 off, from 00:00
    hours = [(day, f"{m // 60:02d}:{m % 60:02d}", f"{(m + 25) // 60:02d}:{(m + 25) % 60:02d}")
             for day in range(1, 8) for m in range(0, per_day * 30, 30)]
    await factory.weekly_hours(doctor, hours)
    first_day = day(2)
    # Time off: every other hour of the 62 days, up to the cap (written straight to the table, as fast setup).
    insert_rows(mysql, "INSERT INTO time_off (doctor_id, start_time, end_time, created_by, created_at)"
                       " VALUES (%s, %s, %s, %s, %s)",
                [(doctor["id"], naive(first_day + k * 2 * 60 * M), naive(first_day + (k * 2 + 1) * 60 * M),
                  doctor["id"], CREATED) for k in range(MAX_UPCOMING_TIME_OFF)])
    patient = await factory.patient()
    booked = fill_with_appointments(mysql, doctor["id"], patient["id"], first_day, first_day + timedelta(days=62),
                                    FIVE)
    assert booked == 62 * 24 * 12
    worst = 0.0
    for shift in range(3):
        for path, params in (("slots", {"duration": 5}), ("availability", {})):
            started = time.perf_counter()
            response = await client.get(f"/doctors/{doctor['id']}/{path}", params={
                "from": iso(first_day + shift * FIVE), "to": iso(first_day + timedelta(days=62)), "limit": 1000,
                **params})
            worst = max(worst, time.perf_counter() - started)
            assert response.status_code == 200, response.text
    assert response.json() and all(interval["free"] == [] for interval in response.json())
    assert worst < 1.0, f"a read of the worst weekly schedule took {worst:.3f} s"
