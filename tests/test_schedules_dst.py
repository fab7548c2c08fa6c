"""Weekly hours across daylight-saving changes, 30- and 45-minute offsets and a leap day.

Six zones (Europe/Berlin, America/New_York, Australia/Lord_Howe with its 30-minute DST, Asia/Kathmandu at +05:45,
Pacific/Chatham at +12:45/+13:45, UTC) on the days their clocks change in 2031 (found here by scanning zoneinfo,
not written down), an ordinary day and 2032-02-29. Expectations come from an independent model: walk UTC minute
by minute, read each minute's wall clock with zoneinfo (UTC to local is never ambiguous), and call a minute
available when its wall-clock date and time lie in the weekly hours. So a skipped local time offers nothing, a
repeated one is offered on each pass, and nothing is offered whose wall clock reads a time outside the hours.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pymysql
import pytest

from service.core.availability import WeeklyInterval, wall_to_utc, weekly_spans
from tests.factory import Factory, User, at, iso

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "UTC"]
DST_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham"]
YEAR = 2031
LEAP_DAY = date(2032, 2, 29)
M = timedelta(minutes=1)
DAY = timedelta(days=1)

Span = tuple[datetime, datetime]
Hours = tuple[tuple[int, int, int], ...]  # (ISO weekday, start minute, end minute) on the wall clock


# --- the independent model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    """A change of the zone's UTC offset: `instant` (aware UTC) is the first one with the new offset."""

    instant: datetime
    before: timedelta
    after: timedelta

    @property
    def forward(self) -> bool:
        return self.after > self.before

    @property
    def day(self) -> date:
        return (self.instant + self.after).date()

    @property
    def walls(self) -> tuple[int, int]:
        """The wall-clock minutes [from, to) the change skips (forward) or repeats (back)."""
        old, new = minute_of(self.instant + self.before), minute_of(self.instant + self.after)
        return (old, new) if self.forward else (new, old)

    @property
    def middle(self) -> int:
        """A wall-clock minute on the 5-minute grid strictly inside `walls`."""
        start, end = self.walls
        return start + (end - start) // 2 // 5 * 5


def minute_of(moment: datetime) -> int:
    return moment.hour * 60 + moment.minute


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def offset_at(zone: ZoneInfo, instant: datetime) -> timedelta:
    return instant.astimezone(zone).utcoffset()  # type: ignore[return-value]


@cache
def transitions(zone_name: str, year: int) -> tuple[Transition, ...]:
    """The offset changes of `year`: day by day for the days whose offset changes, then minute by minute."""
    zone = ZoneInfo(zone_name)
    found = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        if offset_at(zone, day) != offset_at(zone, day + DAY):
            moment = day
            while offset_at(zone, moment + M) == offset_at(zone, day):
                moment += M
            found.append(Transition(moment + M, offset_at(zone, day), offset_at(zone, moment + M)))
        day += DAY
    return tuple(found)


def forward_and_back(zone_name: str) -> tuple[Transition, Transition]:
    changes = transitions(zone_name, YEAR)
    assert len(changes) == 2, changes
    forward, back = sorted(changes, key=lambda t: not t.forward)
    assert forward.forward and not back.forward
    return forward, back


def ordinary_day() -> date:
    """The first Wednesday of July 2031: no zone here changes its clocks in July."""
    day = date(YEAR, 7, 1)
    while day.isoweekday() != 3:
        day += timedelta(days=1)
    return day


def special_days(zone_name: str) -> dict[str, date]:
    days = {"ordinary": ordinary_day(), "leap day": LEAP_DAY}
    if zone_name in DST_ZONES:
        forward, back = forward_and_back(zone_name)
        days = {"clocks forward": forward.day, "clocks back": back.day, **days}
    assert all(day not in {t.day for t in transitions(zone_name, day.year)}
               for name, day in days.items() if name in ("ordinary", "leap day"))
    return days


def read_range(day: date) -> tuple[datetime, datetime]:
    """From the UTC midnight before `day` to two days after: every zone's local `day` lies inside (offsets are
    within ±14 h)."""
    start = datetime.combine(day, time(), UTC) - DAY
    return start, start + 3 * DAY


@cache
def walk(zone_name: str, day: date) -> tuple[tuple[datetime, datetime], ...]:
    """Every UTC minute of read_range(day), with the wall-clock time (naive) it reads in the zone."""
    zone = ZoneInfo(zone_name)
    start, end = read_range(day)
    minutes = int((end - start) / M)
    return tuple((start + i * M, (start + i * M).astimezone(zone).replace(tzinfo=None)) for i in range(minutes))


def available_runs(zone_name: str, day: date, hours: Hours) -> list[Span]:
    """The model's available intervals in read_range(day): runs of consecutive minutes whose wall clock lies in
    one weekly interval on one date (each occurrence of a weekly interval is an interval of its own)."""
    runs: list[Span] = []
    previous = None
    for instant, wall in walk(zone_name, day):
        minute = minute_of(wall)
        key = next(((wall.date(), i) for i, (weekday, start, end) in enumerate(hours)
                    if wall.isoweekday() == weekday and start <= minute < end), None)
        if key is not None and key == previous:
            runs[-1] = (runs[-1][0], instant + M)
        elif key is not None:
            runs.append((instant, instant + M))
        previous = key
    return runs


def model_slots(runs: list[Span], length: timedelta, earliest: datetime, latest: datetime) -> list[Span]:
    """Slots of `length` stepping from the start of each available interval, inside [earliest, latest)."""
    found = []
    for start, end in runs:
        moment = start
        while moment + length <= end:
            if moment >= earliest and moment + length <= latest:
                found.append((moment, moment + length))
            moment += length
    return found


def wall_exists(zone: ZoneInfo, wall: datetime) -> bool:
    """Whether some instant reads `wall` on the zone's clock (a skipped time round-trips to another)."""
    return any(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
               for fold in (0, 1))


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- the model itself, pinned to facts known by heart -------------------------------------------------------------

def test_the_transitions_found_are_the_known_ones() -> None:
    def summary(zone_name: str) -> list[tuple[date, str, str]]:
        return [(t.day, hhmm(t.walls[0]), hhmm(t.walls[1])) for t in forward_and_back(zone_name)]

    assert summary("Europe/Berlin") == [(date(2031, 3, 30), "02:00", "03:00"), (date(2031, 10, 26), "02:00", "03:00")]
    assert summary("America/New_York") == [(date(2031, 3, 9), "02:00", "03:00"),
                                           (date(2031, 11, 2), "01:00", "02:00")]
    assert summary("Australia/Lord_Howe") == [(date(2031, 10, 5), "02:00", "02:30"),
                                              (date(2031, 4, 6), "01:30", "02:00")]
    assert summary("Pacific/Chatham") == [(date(2031, 9, 28), "02:45", "03:45"), (date(2031, 4, 6), "02:45", "03:45")]
    for zone_name in ("Asia/Kathmandu", "UTC"):
        assert transitions(zone_name, YEAR) == transitions(zone_name, 2032) == ()
    assert offset_at(ZoneInfo("Asia/Kathmandu"), datetime(2031, 6, 1, tzinfo=UTC)) == timedelta(hours=5, minutes=45)
    assert LEAP_DAY.isoweekday() == 7 and ordinary_day() == date(2031, 7, 2)
    berlin = ZoneInfo("Europe/Berlin")
    assert available_runs("Europe/Berlin", date(2031, 3, 30), ((7, 60, 240),)) == [
        (datetime(2031, 3, 30, 0, tzinfo=UTC), datetime(2031, 3, 30, 2, tzinfo=UTC))]  # two hours, not three
    assert available_runs("Europe/Berlin", date(2031, 10, 26), ((7, 60, 240),)) == [
        (datetime(2031, 10, 25, 23, tzinfo=UTC), datetime(2031, 10, 26, 3, tzinfo=UTC))]  # four hours
    assert not wall_exists(berlin, datetime(2031, 3, 30, 2, 30)) and wall_exists(berlin, datetime(2031, 10, 26, 2, 30))


# --- wall_to_utc and weekly_spans, pure ---------------------------------------------------------------------------

@pytest.mark.parametrize("zone_name", ZONES)
def test_wall_to_utc_is_the_first_occurrence_as_a_start_the_last_as_an_end_and_the_jump_for_a_skipped_time(
    zone_name: str,
) -> None:
    zone = ZoneInfo(zone_name)
    for day in special_days(zone_name).values():
        readings: dict[datetime, list[datetime]] = {}
        minutes = walk(zone_name, day)
        for instant, wall in minutes:
            readings.setdefault(wall, []).append(instant)
        for minute in range(0, 24 * 60 + 1, 5):
            wall = datetime.combine(day, time()) + minute * M
            instants = readings.get(wall, [])
            if not instants:  # skipped: the first instant whose clock reads a later time
                jump = next(i for (i, w), (_, before) in zip(minutes[1:], minutes, strict=False)
                            if before < wall < w)
                instants = [jump]
            assert len(instants) <= 2, (zone_name, wall, instants)
            first, last = naive(instants[0]), naive(instants[-1])
            assert wall_to_utc(day, minute, zone, is_end=False) == first, (zone_name, wall)
            assert wall_to_utc(day, minute, zone, is_end=True) == last, (zone_name, wall)


# Wall-clock minutes to try as the ends of an interval: every 15 minutes around the transitions (all of them lie
# between 01:00 and 04:00 here), and the day's edges.
WALL_POINTS = [*range(0, 6 * 60 + 1, 15), 23 * 60, 24 * 60]


@pytest.mark.parametrize("zone_name", ZONES)
def test_weekly_spans_hold_exactly_the_instants_whose_wall_clock_is_in_the_hours(zone_name: str) -> None:
    """Every interval between two of WALL_POINTS, on every special day: the spans are the model's runs (a skipped
    time offers nothing, a repeated one is offered on each pass, and only there)."""
    zone = ZoneInfo(zone_name)
    for day in special_days(zone_name).values():
        start, end = read_range(day)
        same_day = [(instant, minute_of(wall)) for instant, wall in walk(zone_name, day) if wall.date() == day]
        for i, first in enumerate(WALL_POINTS):
            for last in WALL_POINTS[i + 1:]:
                expected: list[Span] = []
                for instant in [instant for instant, minute in same_day if first <= minute < last]:
                    if expected and expected[-1][1] == instant:
                        expected[-1] = (expected[-1][0], instant + M)
                    else:
                        expected.append((instant, instant + M))
                spans = weekly_spans([WeeklyInterval(day.isoweekday(), first, last)], zone, naive(start), naive(end))
                assert sorted(spans) == [(naive(s), naive(e)) for s, e in expected], (zone_name, day, first, last)


def split_points(zone_name: str) -> list[int]:
    """Where to split each day in two: the transitions' wall times and the middles of them (or two ordinary times)."""
    if zone_name not in DST_ZONES:
        return [90, 150]
    return sorted({m for t in forward_and_back(zone_name) for m in (*t.walls, t.middle)})


@pytest.mark.parametrize("zone_name", ZONES)
def test_every_day_of_2031_and_2032_covers_each_instant_exactly_once(zone_name: str) -> None:
    """Weekly hours 00:00-24:00 every day, or each day split in two at a transition's wall time: the spans tile
    the two years, no gap and no overlap; a day lasts 24 hours except on the days the clocks change."""
    zone = ZoneInfo(zone_name)
    start, end = datetime(2031, 1, 1), datetime(2033, 1, 1)
    whole_days = [WeeklyInterval(weekday, 0, 24 * 60) for weekday in range(1, 8)]
    changes = {t.day: t.before - t.after for year in (2031, 2032) for t in transitions(zone_name, year)}
    assert len(changes) == (4 if zone_name in DST_ZONES else 0)

    spans = sorted(weekly_spans(whole_days, zone, start, end))
    assert spans[0][0] <= start and spans[-1][1] >= end
    assert all(earlier[1] == later[0] for earlier, later in zip(spans, spans[1:], strict=False))
    for (span_start, span_end), (next_start, _) in zip(spans, spans[1:], strict=False):
        local_start = span_start.replace(tzinfo=UTC).astimezone(zone)
        assert local_start.time() == time() and (local_start + DAY).date() == next_start.replace(
            tzinfo=UTC).astimezone(zone).date()
        assert span_end - span_start == DAY + changes.get(local_start.date(), timedelta(0)), local_start

    for split in split_points(zone_name):
        halves = [WeeklyInterval(weekday, s, e) for weekday in range(1, 8) for s, e in ((0, split), (split, 24 * 60))]
        pieces = sorted(weekly_spans(halves, zone, start, end))
        assert pieces[0][0] <= start and pieces[-1][1] >= end, split
        overlaps_or_gaps = [(a, b) for a, b in zip(pieces, pieces[1:], strict=False) if a[1] != b[0]]
        assert overlaps_or_gaps == [], (zone_name, hhmm(split), overlaps_or_gaps[:3])


# --- slot reads ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    start: int
    end: int
    duration: int  # minutes


def cases(zone_name: str) -> list[Case]:
    """Weekly hours to try on each special day: the whole day, 01:00-04:00 (across every transition here), and
    intervals that start, end or lie inside the skipped and the repeated time."""
    found = [Case("whole day", 0, 24 * 60, 15), Case("01:00-04:00", 60, 240, 25)]
    if zone_name not in DST_ZONES:
        return [*found, Case("first 45 minutes", 0, 45, 15), Case("last hour", 23 * 60, 24 * 60, 20)]
    forward, back = forward_and_back(zone_name)
    (skip_from, skip_to), (repeat_from, repeat_to) = forward.walls, back.walls
    return [
        *found,
        Case("starts in the skipped time", forward.middle, skip_to + 60, 20),
        Case("ends in the skipped time", skip_from - 60, forward.middle, 10),
        Case("inside the skipped time", skip_from + 5, skip_to - 5, 5),
        Case("starts in the repeated time", back.middle, repeat_to + 60, 20),
        Case("ends in the repeated time", repeat_from - 60, back.middle, 10),
        Case("ends where the repeated time starts", repeat_from - 60, repeat_from, 10),
        Case("inside the repeated time", repeat_from + 5, repeat_to - 5, 5),
    ]


async def doctor_with_hours(factory: Factory, zone_name: str, hours: Hours) -> User:
    doctor = await factory.doctor(timezone=zone_name)
    answer = await factory.weekly_hours(doctor, [(d, hhmm(s), hhmm(e)) for d, s, e in hours])
    assert answer["timezone"] == zone_name
    return doctor


async def read_slots(client: httpx.AsyncClient, doctor_id: int, day: date, duration: int) -> list[dict[str, Any]]:
    start, end = read_range(day)
    response = await client.get(f"/doctors/{doctor_id}/slots",
                                params={"from": iso(start), "to": iso(end), "duration": duration})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["doctor_id"], body["duration"], body["next_from"]) == (doctor_id, duration, None)
    return body["slots"]


def check_slots(zone_name: str, day_name: str, day: date, case: Case, hours: Hours,
                slots: list[dict[str, Any]]) -> None:
    zone = ZoneInfo(zone_name)
    where = (zone_name, day_name, day, case)
    length = case.duration * M
    expected = model_slots(available_runs(zone_name, day, hours), length, *read_range(day))
    assert [(parse(s["start_time"]), parse(s["end_time"])) for s in slots] == expected, where
    for slot in slots:
        start, end = parse(slot["start_time"]), parse(slot["end_time"])
        assert start.utcoffset() == end.utcoffset() == timedelta(0), slot
        local_start, local_end = parse(slot["local_start_time"]), parse(slot["local_end_time"])
        # The same instants, each carrying the doctor's offset at that instant.
        assert local_start == start and local_start.utcoffset() == offset_at(zone, start), (where, slot)
        assert local_end == end and local_end.utcoffset() == offset_at(zone, end), (where, slot)
        wall = local_start.replace(tzinfo=None)
        assert wall_exists(zone, wall), (where, slot)
        assert wall.date() == day and case.start <= minute_of(wall) < case.end, (where, slot)
        assert slot["availability_id"] is None
    # A wall time read twice must lie in the repeated time of a clocks-back day, once with each offset.
    readings: dict[datetime, set[timedelta | None]] = {}
    for slot in slots:
        local_start = parse(slot["local_start_time"])
        readings.setdefault(local_start.replace(tzinfo=None), set()).add(local_start.utcoffset())
    twice = {wall: offsets for wall, offsets in readings.items() if len(offsets) > 1}
    if day_name == "clocks back":
        back = forward_and_back(zone_name)[1]
        assert all(offsets == {back.before, back.after} and back.walls[0] <= minute_of(wall) < back.walls[1]
                   for wall, offsets in twice.items()), (where, twice)
        if case.name == "whole day":  # 24 h + the repeated time, every 15 minutes; each repeated wall time twice
            repeated = int((back.before - back.after) / M)
            assert len(slots) == (24 * 60 + repeated) // 15 and len(twice) == repeated // 15, where
    else:
        assert twice == {}, where
    if day_name == "clocks forward" and case.name == "whole day":
        forward = forward_and_back(zone_name)[0]
        assert len(slots) == (24 * 60 - int((forward.after - forward.before) / M)) // 15, where
    if day_name in ("ordinary", "leap day") and case.name == "whole day":
        assert len(slots) == 24 * 4, where


@pytest.mark.parametrize("zone_name", ZONES)
async def test_slots_on_the_clock_changes_and_a_leap_day_are_the_wall_clock_hours(
    client: httpx.AsyncClient, factory: Factory, zone_name: str,
) -> None:
    days = special_days(zone_name)
    weekdays = sorted({day.isoweekday() for day in days.values()})

    async def one_case(case: Case) -> None:
        hours = tuple((weekday, case.start, case.end) for weekday in weekdays)
        doctor = await doctor_with_hours(factory, zone_name, hours)
        answers = await asyncio.gather(*(read_slots(client, doctor["id"], day, case.duration)
                                         for day in days.values()))
        for (day_name, day), slots in zip(days.items(), answers, strict=True):
            check_slots(zone_name, day_name, day, case, hours, slots)

    await asyncio.gather(*(one_case(case) for case in cases(zone_name)))


async def test_the_berlin_examples_answer_as_written(client: httpx.AsyncClient, factory: Factory) -> None:
    """The examples of the schedules' description, written out by hand."""
    doctor = await doctor_with_hours(factory, "Europe/Berlin", ((7, 60, 240), (1, 9 * 60, 10 * 60)))

    async def slots(start: str, end: str) -> list[tuple[str, str]]:
        response = await client.get(f"/doctors/{doctor['id']}/slots",
                                    params={"from": start, "to": end, "duration": 60})
        assert response.status_code == 200, response.text
        return [(s["start_time"], s["local_start_time"]) for s in response.json()["slots"]]

    assert await slots("2031-03-29T00:00:00Z", "2031-04-01T00:00:00Z") == [
        ("2031-03-30T00:00:00Z", "2031-03-30T01:00:00+01:00"),
        ("2031-03-30T01:00:00Z", "2031-03-30T03:00:00+02:00"),
        ("2031-03-31T07:00:00Z", "2031-03-31T09:00:00+02:00"),
    ]
    assert await slots("2031-10-25T00:00:00Z", "2031-10-28T00:00:00Z") == [
        ("2031-10-25T23:00:00Z", "2031-10-26T01:00:00+02:00"),
        ("2031-10-26T00:00:00Z", "2031-10-26T02:00:00+02:00"),
        ("2031-10-26T01:00:00Z", "2031-10-26T02:00:00+01:00"),
        ("2031-10-26T02:00:00Z", "2031-10-26T03:00:00+01:00"),
        ("2031-10-27T08:00:00Z", "2031-10-27T09:00:00+01:00"),
    ]


# --- bookings decided by the worker -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Booking:
    name: str
    doctor: str  # a key of the test's doctors
    start: datetime
    minutes: int
    outcome: str  # "confirmed", or the reason of the rejection

    @property
    def end(self) -> datetime:
        return self.start + self.minutes * M


def local_midnight(zone: ZoneInfo, day: date) -> datetime:
    """Midnight starting `day` on the zone's clock, as an aware UTC instant (it exists in these zones)."""
    return datetime.combine(day, time(), zone).astimezone(UTC)


def bookings_and_hours(zone_name: str) -> tuple[dict[str, Hours], list[Booking]]:
    """Doctors (by their weekly hours) and the bookings to ask of them, with the outcome each must get."""
    zone = ZoneInfo(zone_name)
    leap = LEAP_DAY.isoweekday()
    midnight, next_midnight = local_midnight(zone, LEAP_DAY), local_midnight(zone, LEAP_DAY + timedelta(days=1))
    doctors: dict[str, Hours] = {"leap day": ((leap, 0, 24 * 60),)}
    bookings = [
        Booking("the leap day's first half hour", "leap day", midnight, 30, "confirmed"),
        Booking("the leap day's last half hour", "leap day", next_midnight - 30 * M, 30, "confirmed"),
        Booking("the half hour before it", "leap day", midnight - 30 * M, 30, "outside_availability"),
        Booking("the half hour after it", "leap day", next_midnight, 30, "outside_availability"),
    ]
    if zone_name not in DST_ZONES:
        return doctors, bookings
    forward, back = forward_and_back(zone_name)
    (skip_from, skip_to), (repeat_from, repeat_to) = forward.walls, back.walls
    jump, fall = forward.instant, back.instant  # the first instants on the new offset
    repeated = int((back.before - back.after) / M)  # minutes the clocks go back
    first_pass = fall - repeated * M  # the first instant reading repeat_from
    into_fold = back.middle - repeat_from
    sunday = forward.day.isoweekday()
    assert back.day.isoweekday() == sunday
    doctors |= {
        "around both": ((sunday, min(skip_from, repeat_from) - 60, max(skip_to, repeat_to) + 60),),
        "around both, across": ((sunday, min(skip_from, repeat_from) - 60, max(skip_to, repeat_to) + 60),),
        "ends in the skipped time": ((sunday, skip_from - 60, forward.middle),),
        "starts in the skipped time": ((sunday, forward.middle, skip_to + 60),),
        "ends where the repeated time starts": ((sunday, repeat_from - 60, repeat_from),),
        "ends in the repeated time": ((sunday, repeat_from - 60, back.middle),),
        "starts in the repeated time": ((sunday, back.middle, repeat_to + 60),),
    }
    return doctors, [
        *bookings,
        # The repeated wall time, on each pass: two instants, two patients, both confirmed.
        Booking("repeated time, first pass", "around both", first_pass, 30, "confirmed"),
        Booking("repeated time, second pass", "around both", fall, 30, "confirmed"),
        # Across the changes: real minutes inside the hours either side.
        Booking("across the jump forward", "around both, across", jump - 15 * M, 30, "confirmed"),
        Booking("across the jump back", "around both, across", fall - 15 * M, 30, "confirmed"),
        # Hours ending in the skipped time end at the jump: the skipped start read with the old offset is after it.
        Booking("the last half hour before the jump", "ends in the skipped time", jump - 30 * M, 30, "confirmed"),
        Booking("the skipped time read with the old offset", "ends in the skipped time", jump, 30,
                "outside_availability"),
        # Hours starting in the skipped time start at the jump: read with the new offset, it is before it.
        Booking("the jump itself", "starts in the skipped time", jump, 30, "confirmed"),
        Booking("the skipped start read with the new offset", "starts in the skipped time",
                jump - (skip_to - forward.middle) * M, 30, "outside_availability"),
        # Hours ending where the repeated time starts end on its first pass: its wall clock then reads the end.
        Booking("before the repeated time", "ends where the repeated time starts", first_pass - 30 * M, 30,
                "confirmed"),
        Booking("the repeated time's first pass", "ends where the repeated time starts", first_pass, 30,
                "outside_availability"),
        Booking("the repeated time's second pass", "ends where the repeated time starts", fall, 30,
                "outside_availability"),
        # Hours ending inside the repeated time: offered on each pass up to their end, not between.
        Booking("first pass, before the end", "ends in the repeated time", first_pass, into_fold, "confirmed"),
        Booking("first pass, after the end", "ends in the repeated time", first_pass + into_fold * M,
                repeated - into_fold, "outside_availability"),
        Booking("second pass, before the end", "ends in the repeated time", fall, into_fold, "confirmed"),
        # Hours starting inside the repeated time: offered on each pass from their start, not before.
        Booking("first pass, after the start", "starts in the repeated time", first_pass + into_fold * M,
                repeated - into_fold, "confirmed"),
        Booking("second pass, before the start", "starts in the repeated time", fall, into_fold,
                "outside_availability"),
        Booking("second pass, after the start", "starts in the repeated time", fall + into_fold * M, 30,
                "confirmed"),
    ]


@pytest.mark.parametrize("zone_name", ZONES)
async def test_bookings_at_the_changes_are_decided_on_real_instants(
    client: httpx.AsyncClient, factory: Factory, mysql: pymysql.Connection, zone_name: str,
) -> None:
    hours, bookings = bookings_and_hours(zone_name)
    names = list(hours)
    doctors = dict(zip(names, await asyncio.gather(*(doctor_with_hours(factory, zone_name, hours[name])
                                                     for name in names)), strict=True))
    patients = await asyncio.gather(*(factory.patient() for _ in bookings))  # one each: no one is busy elsewhere
    answers = await asyncio.gather(*(factory.book(patient, doctors[b.doctor]["id"], b.start, b.end, wait=10)
                                     for patient, b in zip(patients, bookings, strict=True)))

    for booking, answer in zip(bookings, answers, strict=True):
        where = (zone_name, booking.name, booking.start, booking.end)
        if booking.outcome == "confirmed":
            assert answer.status_code == 201, (where, answer.text)
            body = answer.json()
            assert (body["status"], parse(body["start_time"]), parse(body["end_time"])) == (
                "confirmed", booking.start, booking.end), where
        else:
            assert answer.status_code == 409, (where, answer.text)
            assert answer.json()["reason"] == booking.outcome, where

    by_id = {doctor["id"]: name for name, doctor in doctors.items()}
    with mysql.cursor() as cursor:
        cursor.execute("SELECT doctor_id, start_time, end_time, status FROM appointments WHERE doctor_id IN %s",
                       (tuple(by_id),))
        rows = cursor.fetchall()
        cursor.execute("SELECT doctor_id, start_time, end_time, status, reason FROM booking_requests "
                       "WHERE doctor_id IN %s", (tuple(by_id),))
        requests = cursor.fetchall()
    assert sorted((by_id[r["doctor_id"]], r["start_time"], r["end_time"], r["status"]) for r in rows) == sorted(
        (b.doctor, naive(b.start), naive(b.end), "confirmed") for b in bookings if b.outcome == "confirmed")
    assert sorted((by_id[r["doctor_id"]], r["start_time"], r["end_time"], r["status"], r["reason"])
                  for r in requests) == sorted(
        (b.doctor, naive(b.start), naive(b.end), "confirmed" if b.outcome == "confirmed" else "rejected",
         None if b.outcome == "confirmed" else b.outcome) for b in bookings)


# --- found on the way ---------------------------------------------------------------------------------------------

async def test_an_appointment_with_buffers_keeps_slot_reads_and_decisions_working(
    client: httpx.AsyncClient, factory: Factory,
) -> None:
    """MariaDB types the schedule queries' number columns (unsigned integers in some rows, NULL in others) as
    DECIMAL, which timedelta refuses: before main read them with int(), a booked appointment's buffers made every
    slot read of its doctor a 500 and every later booking `retries_exhausted`, as weekly hours did."""
    doctor, first, second = await factory.doctor(), await factory.patient(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    visit = await factory.appointment_type(doctor, duration_minutes=30, buffer_before_minutes=10,
                                           buffer_after_minutes=10)

    async def book(patient: User, start: datetime) -> httpx.Response:
        return await client.post("/appointments", headers={**patient.headers, "Prefer": "wait=10"}, json={
            "doctor_id": doctor["id"], "start_time": iso(start), "appointment_type_id": visit["id"]})

    booked = await book(first, at(10))
    assert booked.status_code == 201, booked.text
    clash = await book(second, at(10.5))  # its buffer reaches into the first one's: [10:20, 11:10) ∩ [9:50, 10:40)
    assert clash.status_code == 409 and clash.json()["reason"] == "slot_taken", clash.text
    response = await client.get(f"/doctors/{doctor['id']}/slots", params={
        "from": iso(at(0)), "to": iso(at(24)), "appointment_type_id": visit["id"]})
    assert response.status_code == 200, response.text
    assert [parse(s["start_time"]) for s in response.json()["slots"]] == [at(9), at(11), at(11.5)]
