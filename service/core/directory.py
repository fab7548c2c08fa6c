"""The directory's "first free": each listed doctor's next bookable slot after an instant, for many doctors at once.

A few round trips whatever the number of doctors: every doctor's schedule over a short range first (most have a
slot within a day), then, for those still without one, over longer and longer ranges, each in one query.

With a DirectoryCache (the API keeps one a process), a search's matching doctors and each doctor's slots over the
coming days are computed once and kept until they change, so a warm search reads nothing from MySQL; and a search
sorted by next free slot is answered from a ranking of its doctors' slots (`_Ranking`), in time proportional to its
page rather than to the number of doctors it ranks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Protocol
from zoneinfo import ZoneInfo

from service.core.db import Database, Row
from service.core.doctors import list_doctors
from service.core.errors import InvalidInput
from service.core.schedule import Slot, doctor_time_from_rows, in_zone, read_bounds, rules_of
from service.core.times import utcnow
from service.core.zones import zone_named

log = logging.getLogger("service.directory")

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
    by_id: dict[int, Row]  # the rows by doctor id


async def read_listing(db: Database, name_part: str | None, specialty: str | None, type_name: str | None,
                       limit: int, offset: int) -> Listing:
    rows, total = await list_doctors(db, name_part, specialty, limit, offset, type_name)
    types: dict[int, Row] = {}
    if type_name is not None and rows:
        for row in await db.fetch_all("list_active_types_named", {"doctor_ids": tuple(row["id"] for row in rows),
                                                                  "type_name": type_name}):
            types.setdefault(row["doctor_id"], row)
    return Listing(rows, total, types, {row["id"]: row for row in rows})


@dataclass(slots=True)
class _Entry:
    """One doctor's slots as arrays of numbers (minutes since 1970, window ids or 0): a process keeps thousands of
    these, and arrays are no work for the garbage collector, where as many tuples of objects made its full
    collections the slowest requests."""

    version: str
    expires: float  # time.monotonic()
    lapses: float  # time.monotonic() when the first live hold it read lapses (inf: none)
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

    def __init__(self, version_of: Callable[[int], str], listing_version: Callable[[], str],
                 change_log: ChangeLog | None = None, ttl: float = 30.0, max_slots: int = 5_000_000,
                 max_listed: int = 200_000) -> None:
        self.version_of = version_of
        self.listing_version = listing_version
        self.change_log = change_log  # without one, sorted searches look up each doctor's entry (no rankings)
        self.ttl = ttl
        self.max_slots = max_slots  # slots kept in all (4 + 8 bytes each), so memory is bounded whatever is asked
        self.max_listed = max_listed  # doctors' rows kept in all listings
        self._entries: dict[tuple[int, int | None], _Entry] = {}
        self._slots = 0
        self._filling = asyncio.Lock()  # one fill at a time: concurrent searches wait for it instead of repeating it
        self._listings: dict[tuple[object, ...], tuple[str, float, Listing]] = {}
        self._listed = 0
        self._reading: dict[tuple[object, ...], asyncio.Task[Listing]] = {}
        self._rankings: dict[tuple[object, ...], _Ranking] = {}
        self._ranked_slots = 0  # keys in all rankings, bounded by max_slots as the entries are
        self._ranking_made = asyncio.Lock()  # one made at a time (they are rare: a listing's first, then each `ttl`)
        self._remaking: dict[tuple[object, ...], asyncio.Task[_Ranking | None]] = {}

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

    async def fill(self, db: Database, doctor_ids: AbstractSet[int], types: dict[int, Row], zones: dict[int, ZoneInfo],
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
                lapse = min((row["c"] for row in rows if row["kind"] == "held" and (row["c"] or 0) > 0),
                            default=float("inf"))
                made = time.monotonic()
                self._keep((doctor_id, type_id_of(appointment_type)), _Entry(
                    versions[doctor_id], made + min(self.ttl * random.uniform(0.5, 1.0), lapse), made + lapse, until,
                    length,
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

    async def ranked(self, db: Database, key: tuple[object, ...], listing: Listing, doctor_ids: AbstractSet[int],
                     start: datetime, now: datetime, want: int) -> list[tuple[int, Span]] | None:
        """The first `want` of `doctor_ids` (of `listing`, ranked by their type in it, else by 30 minutes) with their
        first free slot at or after `start`, soonest first (then by name and id), from the listing's ranking (made if
        need be). None where the ranking cannot tell the whole answer: fewer than `want` of them have a slot in what
        it covers, `start` lies beyond it, or it was not built; the caller ranks them the long way."""
        if self.change_log is None or not doctor_ids:
            return None
        ranking = await self._ranking(db, key, listing, doctor_ids)
        if ranking is None:
            return None
        changed = self.change_log.changed_since(ranking.mark)
        if changed is None:
            return None
        start_minute = minutes_from(start)
        if start_minute >= ranking.until:
            return None
        found = ranking.first(start_minute, minutes_from(now), want, changed)
        if found is None:
            return None
        # The doctors changed since the ranking was made: from their own (fresh) entries.
        if changed := changed & doctor_ids:
            fresh = await self._firsts(db, listing, changed, start, now)
            if fresh is None:
                return None
            found += [(minutes(span[0]), ranking.rank[doctor_id], span) for doctor_id, span in fresh.items()
                      if minutes(span[0]) < ranking.until]
            found.sort(key=lambda candidate: candidate[:2])
        if len(found) < min(want, len(doctor_ids)):
            return None  # the rest may have a slot after what the ranking covers: only the long way tells
        return [(ranking.doctor_ids[rank], span) for _, rank, span in found[:want]]

    async def _firsts(self, db: Database, listing: Listing, doctor_ids: set[int], start: datetime,
                      now: datetime) -> dict[int, Span] | None:
        """These doctors' first slots from their entries (filled if need be): those with one in their entry; None if
        an entry could not be had."""
        await self.fill(db, doctor_ids, listing.types, zones_of(listing.rows, doctor_ids), now)
        found: dict[int, Span] = {}
        clock = time.monotonic()
        for doctor_id in doctor_ids:
            appointment_type = listing.types.get(doctor_id)
            earliest = minutes_from(max(start, now + rules_of(appointment_type).min_notice))
            span = self.first(doctor_id, type_id_of(appointment_type), start, earliest, clock)
            if span is False:
                return None
            if span:
                found[doctor_id] = span
        return found

    async def _ranking(self, db: Database, key: tuple[object, ...], listing: Listing,
                       doctor_ids: AbstractSet[int]) -> _Ranking | None:
        """The ranking of these doctors of the listing under `key` while it holds (the listing's version, and at
        most MAX_CHANGED of its doctors changed since), made again otherwise. Past its lifetime it is made again in
        the background, and answers meanwhile (the changes since are still looked up apart): the searches never
        wait for the few hundred doctors' slots it takes, only the first one does."""
        ranking = self._rankings.get(key)
        if ranking is not None and ranking.listing_version == self.listing_version():
            changed = self.change_log.changed_since(ranking.mark)  # type: ignore[union-attr]
            if changed is not None and len(changed) <= MAX_CHANGED:
                if ranking.expires < time.monotonic() and key not in self._remaking:
                    remaking = self._remaking[key] = asyncio.ensure_future(
                        self._make(db, key, listing, doctor_ids, ranking))
                    remaking.add_done_callback(partial(self._remade, key))
                return ranking
        return await self._make(db, key, listing, doctor_ids, ranking)

    def _remade(self, key: tuple[object, ...], remaking: asyncio.Task[_Ranking | None]) -> None:
        del self._remaking[key]
        if not remaking.cancelled() and (error := remaking.exception()) is not None:
            log.warning("could not make the directory's ranking again (the next search will try): %r", error)

    async def _make(self, db: Database, key: tuple[object, ...], listing: Listing, doctor_ids: AbstractSet[int],
                    seen: _Ranking | None) -> _Ranking | None:
        """Make the ranking (one at a time: a search that waited for another's finds it made, unless the one it saw
        was `seen`), and keep it."""
        async with self._ranking_made:
            if (ranking := self._rankings.get(key)) is not seen:
                return ranking
            listing_version, mark = self.listing_version(), self.change_log.mark()  # type: ignore[union-attr]
            await self.fill(db, doctor_ids, listing.types, zones_of(listing.rows, doctor_ids), utcnow())
            if (kept := self._rankings.pop(key, None)) is not None:
                self._ranked_slots -= len(kept.keys)
            ranking = self._rank(listing, doctor_ids, listing_version, mark)
            if ranking is not None:
                if self._ranked_slots + len(ranking.keys) > self.max_slots:
                    self._rankings.clear()
                    self._ranked_slots = 0
                self._rankings[key] = ranking
                self._ranked_slots += len(ranking.keys)
            return ranking

    def _rank(self, listing: Listing, doctor_ids: AbstractSet[int], listing_version: str,
              mark: int) -> _Ranking | None:
        """Rank the doctors' slots from their entries; None if one has no entry matching its version (a change
        raced the fill: the next search tries again)."""
        ranked = sorted((row for row in listing.rows if row["id"] in doctor_ids), key=by_name)
        entries = []
        for row in ranked:
            entry = self._entries.get((row["id"], type_id_of(listing.types.get(row["id"]))))
            if entry is None or entry.version != self.version_of(row["id"]):
                return None
            entries.append(entry)
        until = min(minutes(entry.until) for entry in entries)
        keys = array("q", sorted(slot << RANK_BITS | rank for rank, entry in enumerate(entries)
                                 for slot in entry.starts if slot < until))
        notice = [rules_of(listing.types.get(row["id"])).min_notice // MINUTE for row in ranked]
        lifetime = min(self.ttl * random.uniform(0.5, 1.0), *(entry.lapses - time.monotonic() for entry in entries))
        return _Ranking(listing_version, mark, time.monotonic() + lifetime, until, keys,
                        [row["id"] for row in ranked], {row["id"]: rank for rank, row in enumerate(ranked)},
                        entries, notice)


class ChangeLog(Protocol):
    """Which doctors' schedules changed since a mark (the API's ScheduleVersions)."""

    def mark(self) -> int: ...

    def changed_since(self, mark: int) -> set[int] | None: ...  # None: the log no longer reaches back that far


RANK_BITS = 20  # a ranking's key: a slot's minute above, the doctor's rank (by name, id) in the low bits
RANK_MASK = (1 << RANK_BITS) - 1
MAX_CHANGED = 32  # doctors changed since a ranking was made that a search looks up one by one; past that, made again
SCAN_LIMIT = 20_000  # keys a search walks in a ranking at most (one doctor's many slots first); then the long way


@dataclass(slots=True)
class _Ranking:
    """Every slot of a sorted search's doctors (below `until`, which every entry covers) as one sorted array of
    minute << RANK_BITS | rank, the rank ordering doctors by (name, id): so the first doctors free at or after an
    instant are the first distinct ranks after a bisection, in that order, ties by name. A snapshot of the entries
    it was made from: the doctors changed since `mark` are looked up apart, and it lives no longer than an entry
    would (nor past the first hold lapse it read)."""

    listing_version: str
    mark: int
    expires: float  # time.monotonic()
    until: int  # minutes
    keys: array
    doctor_ids: list[int]  # by rank
    rank: dict[int, int]  # by doctor id
    entries: list[_Entry]  # by rank
    notice: list[int]  # minutes, by rank

    def first(self, start: int, now: int, want: int, skip: set[int]) -> list[tuple[int, int, Span]] | None:
        """(minute, rank, span) of the first `want` doctors free at or after minute `start` and after their notice
        from minute `now`, leaving out the doctors in `skip`; fewer if fewer have one; None if that takes more than
        SCAN_LIMIT keys."""
        keys, found, seen = self.keys, [], set()
        index = bisect_left(keys, start << RANK_BITS)
        end = min(len(keys), index + SCAN_LIMIT)
        while index < end and len(found) < want:
            key = keys[index]
            index += 1
            rank = key & RANK_MASK
            if rank in seen:
                continue
            minute = key >> RANK_BITS
            if minute < now + self.notice[rank]:
                continue
            seen.add(rank)
            if self.doctor_ids[rank] not in skip:
                found.append((minute, rank, self.span(rank, minute)))
        if len(found) < want and end < len(keys):
            return None
        return found

    def span(self, rank: int, minute: int) -> Span:
        entry = self.entries[rank]
        slot_start = EPOCH + minute * MINUTE
        return slot_start, slot_start + entry.length, entry.windows[bisect_left(entry.starts, minute)] or None


# A listing that no announced change retired (a doctor removed by hand) lives this long.
LISTING_SECONDS = 5.0
FILL_SLICE = 25  # doctors computed between two chances for other requests to run
ALL_SLOTS = 12 * 24 * COVERED.days  # every 5-minute slot of COVERED: an entry is never cut short


def by_name(row: Row) -> tuple[str, int]:
    return row["name"], row["id"]


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


def zones_of(doctors: list[Row], doctor_ids: AbstractSet[int]) -> dict[int, ZoneInfo]:
    return {doctor["id"]: zone_named(doctor["timezone"]) for doctor in doctors if doctor["id"] in doctor_ids}


def minutes(moment: datetime) -> int:
    """Whole minutes since 1970 (slots lie on a 5-minute grid)."""
    return (moment - EPOCH) // MINUTE


def minutes_from(moment: datetime) -> int:
    """The first whole minute since 1970 at or after `moment`."""
    return -((EPOCH - moment) // MINUTE)


@lru_cache(maxsize=16_384)
def ranked_slot(span: Span, timezone: str) -> Slot:
    """as_slot, kept: the first slots a busy directory answers with are a few thousand, asked for again and again.
    (Slots are never changed once made.)"""
    return as_slot(span, zone_named(timezone))


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


async def ranked_page(db: Database, cache: DirectoryCache, key: tuple[object, ...], listing: Listing,
                      after: datetime, by_type: bool, limit: int, offset: int) -> list[tuple[Row, Span | None]] | None:
    """A page of the listing sorted by next free slot, from the cache's ranking of it (None where the ranking cannot
    tell: the long way then). Past the doctors with a slot come those without one (none in reach, or not of the
    type searched for), by name, as the long way orders them."""
    now = utcnow()
    start = max(after, now)
    doctor_ids = listing.types.keys() if by_type else listing.by_id.keys()
    if start >= now + COVERED:
        return None
    ranked = await cache.ranked(db, key, listing, doctor_ids, start, now, offset + limit)
    if ranked is None:
        return None
    page: list[tuple[Row, Span | None]] = [(listing.by_id[doctor_id], span) for doctor_id, span in ranked]
    if len(page) < offset + limit:  # every doctor searched for is ranked: the others follow
        page += [(row, None) for row in sorted(listing.rows, key=by_name) if row["id"] not in doctor_ids]
    return page[offset:offset + limit]


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
    if cache is not None and (page := await ranked_page(db, cache, (name_part, specialty, type_name), listing, after,
                                                        type_name is not None, limit, offset)) is not None:
        return [(row, ranked_slot(span, row["timezone"]) if span else None) for row, span in page], listing.total
    spans = await next_free_spans(db, listing, after, type_name is not None, cache)

    never = datetime.max

    def soonest_first(row: Row) -> tuple[datetime, str, int]:  # doctors without a slot last
        span = spans[row["id"]]
        return span[0] if span else never, row["name"], row["id"]

    return with_slots(sorted(listing.rows, key=soonest_first)[offset:offset + limit]), listing.total
