"""The directory's "first free": each listed doctor's next bookable slot after an instant, for many doctors at once.

A few round trips whatever the number of doctors: every doctor's schedule over a short range first (most have a
slot within a day), then, for those still without one, over longer and longer ranges, each in one query.

With a DirectoryCache (the API keeps one a process), a search's matching doctors and each doctor's slots over the
coming days are computed once and kept until they change, so a warm search reads nothing from MySQL.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from service.core.db import Database, Row
from service.core.doctors import list_doctors
from service.core.errors import InvalidInput
from service.core.schedule import Slot, doctor_time_from_rows, in_zone, read_bounds, rules_of
from service.core.times import utcnow
from service.core.zones import zone_named

DEFAULT_LENGTH = timedelta(minutes=30)  # without a type: the slot length a plain slot read assumes
# Each step reads this much further ahead, for the doctors still without a slot: 62 days in all.
STEPS = (timedelta(days=1), timedelta(days=6), timedelta(days=24), timedelta(days=31))
MAX_SORTED = 5000  # doctors ranked by first free slot in one request; narrow the search past that


Span = tuple[datetime, datetime, int | None]  # a slot: its start, end and window (naive UTC)
EPOCH = datetime(1970, 1, 1)
MINUTE = timedelta(minutes=1)
# What a cached entry covers from when it was made: the coming week or two a directory is asked about, with room
# for a slot after a weekend or a holiday (a doctor with none in it is searched further without the cache).
COVERED = timedelta(days=15)


@dataclass(frozen=True, slots=True)
class Listing:
    """The doctors a search matches (a page, or all of them to rank), how many match in all, and each one's active
    type of the name searched for (none without a type name)."""

    rows: list[Row]
    total: int
    types: dict[int, Row]


async def read_listing(db: Database, name_part: str | None, specialty: str | None, type_name: str | None,
                       limit: int, offset: int) -> Listing:
    rows, total = await list_doctors(db, name_part, specialty, limit, offset, type_name)
    types: dict[int, Row] = {}
    if type_name is not None and rows:
        for row in await db.fetch_all("list_active_types_named", {"doctor_ids": tuple(row["id"] for row in rows),
                                                                  "type_name": type_name}):
            types.setdefault(row["doctor_id"], row)
    return Listing(rows, total, types)


@dataclass(slots=True)
class _Entry:
    """One doctor's slots as arrays of numbers (minutes since 1970, window ids or 0): a process keeps thousands of
    these, and arrays are no work for the garbage collector, where as many tuples of objects made its full
    collections the slowest requests."""

    version: str
    expires: float  # time.monotonic()
    until: datetime  # the slots cover [made, until)
    length: timedelta
    starts: array
    windows: array


class DirectoryCache:
    """Each doctor's bookable slots over the coming COVERED days (of a type, or of 30 minutes), kept in this process
    while the doctor's schedule version holds (`version_of`: the API's ScheduleVersions, which every change of the
    doctor's schedule bumps, a booking's decision included), and for `ttl` seconds at most. And the doctors a search
    matches, kept while the listing's version holds (`listing_version`: bumped by every change but a booking's, and
    by a doctor's registration), for LISTING_SECONDS at most.

    The slots do not depend on the instant asked about (each interval's grid starts with the interval), so an entry
    answers any `available_after` it covers: the first slot at or after it, and after the notice from now. A change
    committed in another process reaches this one by pub/sub a moment later, as for the cached slot reads.
    """

    def __init__(self, version_of: Callable[[int], str], listing_version: Callable[[], str], ttl: float = 30.0,
                 max_slots: int = 5_000_000, max_listed: int = 200_000) -> None:
        self.version_of = version_of
        self.listing_version = listing_version
        self.ttl = ttl
        self.max_slots = max_slots  # slots kept in all (4 + 8 bytes each), so memory is bounded whatever is asked
        self.max_listed = max_listed  # doctors' rows kept in all listings
        self._entries: dict[tuple[int, int | None], _Entry] = {}
        self._slots = 0
        self._filling = asyncio.Lock()  # one fill at a time: concurrent searches wait for it instead of repeating it
        self._listings: dict[tuple[object, ...], tuple[str, float, Listing]] = {}
        self._listed = 0
        self._reading: dict[tuple[object, ...], asyncio.Task[Listing]] = {}

    async def listing(self, key: tuple[object, ...], read: Callable[[], Awaitable[Listing]]) -> Listing:
        """What `read` finds for `key` (the doctors, their count and types), from the cache while it holds. One read
        at a time for a key and version: the searches that miss meanwhile wait for it; it completes and is kept even
        if the search that started it is cancelled."""
        version = self.listing_version()
        cached = self._listings.get(key)
        if cached is not None and cached[0] == version and cached[1] > time.monotonic():
            return cached[2]
        reading = self._reading.get((key, version))
        if reading is None:
            reading = self._reading[(key, version)] = asyncio.ensure_future(read())
            reading.add_done_callback(partial(self._listed_read, key, version))
        return await asyncio.shield(reading)

    def _listed_read(self, key: tuple[object, ...], version: str, reading: asyncio.Task) -> None:
        del self._reading[(key, version)]
        if reading.cancelled() or reading.exception() is not None:  # the searches waiting for it see the error
            return
        listing: Listing = reading.result()
        if (kept := self._listings.pop(key, None)) is not None:
            self._listed -= len(kept[2].rows)
        if self._listed + len(listing.rows) > self.max_listed:
            self._listings.clear()
            self._listed = 0
        self._listings[key] = version, time.monotonic() + LISTING_SECONDS, listing  # the version read before
        self._listed += len(listing.rows)

    def first(self, doctor_id: int, type_id: int | None, start: datetime, earliest: int,
              clock: float) -> Span | None | bool:
        """The doctor's first slot starting at or after minute `earliest` (minutes(); at least `start`, and after
        the notice from now); None if the entry covers `start` and has none after it; False if there is no usable
        entry (`clock`: time.monotonic())."""
        entry = self._entries.get((doctor_id, type_id))
        if (entry is None or entry.expires < clock or entry.version != self.version_of(doctor_id)
                or start >= entry.until):
            return False
        index = bisect_left(entry.starts, earliest)
        if index == len(entry.starts):
            return None
        slot_start = EPOCH + entry.starts[index] * MINUTE
        return slot_start, slot_start + entry.length, entry.windows[index] or None

    async def fill(self, db: Database, doctor_ids: set[int], types: dict[int, Row], zones: dict[int, ZoneInfo],
                   now: datetime) -> None:
        """Compute and keep the entries of these doctors (one read of their schedules)."""
        async with self._filling:
            clock = time.monotonic()
            missing = sorted(d for d in doctor_ids
                             if self.first(d, type_id_of(types.get(d)), now, minutes_from(now), clock) is False)
            if not missing:
                return
            versions = {d: self.version_of(d) for d in missing}  # before the read: a change during it retires it
            until = now + COVERED
            rows_of = await schedules_of(db, missing, now, until)
            for done, doctor_id in enumerate(missing, 1):
                appointment_type = types.get(doctor_id)
                length = length_of(appointment_type)
                rows = rows_of[doctor_id]
                spans, _ = doctor_time_from_rows(rows, zones[doctor_id], [(now, until)]).slots(
                    length, now, until, now, ALL_SLOTS, rules_of(appointment_type))
                # Each lives between half and all of `ttl`: entries made together are not all made again together.
                # A live hold's lapse is no change anybody announces: the entry ends with the first one it read (one
                # lapsed but awaiting its confirmation is retired by that decision).
                lifetime = min([self.ttl * random.uniform(0.5, 1.0),
                                *(row["c"] for row in rows if row["kind"] == "held" and (row["c"] or 0) > 0)])
                self._keep((doctor_id, type_id_of(appointment_type)), _Entry(
                    versions[doctor_id], time.monotonic() + lifetime, until, length,
                    array("i", (minutes(span[0]) for span in spans)),
                    array("q", (span[2].window_id or 0 for span in spans))))
                if done % FILL_SLICE == 0:
                    await asyncio.sleep(0)  # thousands of doctors: let other requests in between

    def _keep(self, key: tuple[int, int | None], entry: _Entry) -> None:
        if (kept := self._entries.pop(key, None)) is not None:
            self._slots -= len(kept.starts)
        if self._slots + len(entry.starts) > self.max_slots:
            self._entries.clear()
            self._slots = 0
        self._entries[key] = entry
        self._slots += len(entry.starts)


# A listing that no announced change retired (a doctor removed by hand) lives this long.
LISTING_SECONDS = 5.0
FILL_SLICE = 100  # doctors computed between two chances for other requests to run
ALL_SLOTS = 12 * 24 * COVERED.days  # every 5-minute slot of COVERED: an entry is never cut short


def type_id_of(appointment_type: Row | None) -> int | None:
    return appointment_type["id"] if appointment_type else None


def length_of(appointment_type: Row | None) -> timedelta:
    return timedelta(minutes=appointment_type["duration_minutes"]) if appointment_type else DEFAULT_LENGTH


async def schedules_of(db: Database, doctor_ids: list[int], start: datetime, end: datetime) -> dict[int, list[Row]]:
    rows_of: dict[int, list[Row]] = defaultdict(list)
    for row in await db.fetch_all("list_schedules_of_doctors", {"doctor_ids": tuple(doctor_ids),
                                                                **read_bounds(start, end)}):
        rows_of[row["doctor_id"]].append(row)
    return rows_of


def zones_of(doctors: list[Row], doctor_ids: set[int]) -> dict[int, ZoneInfo]:
    return {doctor["id"]: zone_named(doctor["timezone"]) for doctor in doctors if doctor["id"] in doctor_ids}


def minutes(moment: datetime) -> int:
    """Whole minutes since 1970 (slots lie on a 5-minute grid)."""
    return (moment - EPOCH) // MINUTE


def minutes_from(moment: datetime) -> int:
    """The first whole minute since 1970 at or after `moment`."""
    return -((EPOCH - moment) // MINUTE)


def as_slot(span: Span, zone: ZoneInfo) -> Slot:
    slot_start, slot_end, window_id = span
    return Slot(slot_start.replace(tzinfo=UTC), slot_end.replace(tzinfo=UTC), in_zone(slot_start, zone),
                in_zone(slot_end, zone), window_id)


async def next_free_spans(db: Database, listing: Listing, after: datetime, by_type: bool,
                          cache: DirectoryCache | None = None) -> dict[int, Span | None]:
    """Each listed doctor's first bookable slot starting at or after `after` (within 62 days), or None; `by_type`,
    of their type in the listing (its length and rules; None without one), else of 30 minutes. With `cache`, from
    each doctor's cached week where it covers `after`. (As spans: a search makes Slots of its page's only.)"""
    now = utcnow()
    doctors, types = listing.rows, listing.types
    found: dict[int, Span | None] = {doctor["id"]: None for doctor in doctors}
    if not doctors:
        return found
    pending = set(types) if by_type else set(found)
    start = max(after, now)
    if cache is not None and start < now + COVERED:
        pending = await from_cache(cache, db, pending, types, doctors, start, now, found)
    zones = zones_of(doctors, pending)
    for step in STEPS:
        if not pending:
            break
        end = start + step
        rows_of = await schedules_of(db, sorted(pending), start, end)
        for doctor_id in list(pending):
            appointment_type = types.get(doctor_id)
            first, _ = doctor_time_from_rows(rows_of[doctor_id], zones[doctor_id], [(start, end)]).slots(
                length_of(appointment_type), start, end, now, 1, rules_of(appointment_type))
            if first:
                slot_start, slot_end, interval = first[0]
                found[doctor_id] = slot_start, slot_end, interval.window_id
                pending.discard(doctor_id)
        start = end
    return found


async def from_cache(cache: DirectoryCache, db: Database, doctor_ids: set[int], types: dict[int, Row],
                     doctors: list[Row], start: datetime, now: datetime, found: dict[int, Span | None]) -> set[int]:
    """Answer what the cache can (filling it for the doctors it has no entry of) into `found`; the doctors left
    for the ranged reads (no slot in their cached week: maybe one later)."""
    # The first minute each doctor's slot may start: from `start`, and after the notice of the doctor's type.
    earliest = {doctor_id: minutes_from(max(start, now + rules_of(appointment_type).min_notice))
                for doctor_id, appointment_type in types.items()}
    without_type = minutes_from(start)

    def answer(doctor_ids: set[int]) -> tuple[set[int], set[int]]:
        """Into `found`; the doctors with no entry, and those with none in their entry."""
        missing, without = set(), set()
        clock = time.monotonic()
        for doctor_id in doctor_ids:
            span = cache.first(doctor_id, type_id_of(types.get(doctor_id)), start,
                               earliest.get(doctor_id, without_type), clock)
            if span:
                found[doctor_id] = span  # type: ignore[assignment]
            else:
                (without if span is None else missing).add(doctor_id)
        return missing, without

    missing, without = answer(doctor_ids)
    if missing:
        await cache.fill(db, missing, types, zones_of(doctors, missing), now)
        still_missing, none_cached = answer(missing)
        without |= still_missing | none_cached
    return without


async def search(db: Database, name_part: str | None, specialty: str | None, type_name: str | None,
                 after: datetime | None, sort_by_next_free: bool, limit: int,
                 offset: int, cache: DirectoryCache | None = None) -> tuple[list[tuple[Row, Slot | None]], int]:
    """A page of the directory with each doctor's next free slot after `after` (now by default), by name or by
    that slot (soonest first, doctors with none last)."""
    after = after or utcnow()

    def with_slots(rows: list[Row]) -> list[tuple[Row, Slot | None]]:
        return [(row, as_slot(span, zone_named(row["timezone"])) if (span := spans[row["id"]]) else None)
                for row in rows]

    async def matching(limit: int, offset: int) -> Listing:
        def read() -> Awaitable[Listing]:
            return read_listing(db, name_part, specialty, type_name, limit, offset)
        if cache is None:
            return await read()
        return await cache.listing((name_part, specialty, type_name, limit, offset), read)

    if not sort_by_next_free:
        listing = await matching(limit, offset)
        spans = await next_free_spans(db, listing, after, type_name is not None, cache)
        return with_slots(listing.rows), listing.total
    listing = await matching(MAX_SORTED + 1, 0)
    if listing.total > MAX_SORTED:
        raise InvalidInput(f"{listing.total} doctors match: narrow the search (specialty, q, appointment_type_name) "
                           f"to at most {MAX_SORTED} to sort them by next free slot", field="sort")
    spans = await next_free_spans(db, listing, after, type_name is not None, cache)

    never = datetime.max

    def soonest_first(row: Row) -> tuple[datetime, str, int]:  # doctors without a slot last
        span = spans[row["id"]]
        return span[0] if span else never, row["name"], row["id"]

    return with_slots(sorted(listing.rows, key=soonest_first)[offset:offset + limit]), listing.total
