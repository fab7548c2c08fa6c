"""Whether a span of a doctor's time can be booked: the one answer for slot reads and the worker's decision.

Both build a `DoctorTime` from what they read (weekly hours in the doctor's zone, one-off windows, time off, the
time already taken) and ask it `why_not`: a slot read for each point of each available interval's grid, the
decision for each request in turn. Every question is a binary search over sorted spans, so the work grows as
n log n in what a doctor (or an attacker) has stored, never as windows × appointments.

Instants are naive UTC, spans half-open: [start, end). Weekly hours are wall-clock times in the doctor's zone: they
hold exactly the instants whose clock reads a time inside them. A local time that does not exist (the hour skipped
in spring) offers nothing, and the hour repeated in autumn is offered twice, as the two instants it names.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

Span = tuple[datetime, datetime]

# Machine-readable reasons a span cannot be booked.
IN_PAST = "in_past"
TOO_SOON = "too_soon"
TOO_FAR_AHEAD = "too_far_ahead"
OUTSIDE_AVAILABILITY = "outside_availability"
SLOT_TAKEN = "slot_taken"

ZERO = timedelta(0)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Rules:
    """What a booking of one kind must respect (an appointment type's, or none for a plain start and end)."""

    buffer_before: timedelta = ZERO
    buffer_after: timedelta = ZERO
    min_notice: timedelta = ZERO
    max_ahead: timedelta | None = None

    def blocked(self, start: datetime, end: datetime) -> Span:
        """The doctor's time an appointment [start, end) of this kind blocks: itself and its buffers."""
        return start - self.buffer_before, end + self.buffer_after


NO_RULES = Rules()


@dataclass(frozen=True, slots=True)
class WeeklyInterval:
    weekday: int  # ISO: 1 Monday … 7 Sunday
    start_minute: int  # after local midnight
    end_minute: int  # 1440: the midnight that ends the day


@dataclass(frozen=True, slots=True)
class Available:
    """One available interval: slots step from its start. `window_id` names the one-off window it came from."""

    start: datetime
    end: datetime
    window_id: int | None = None


def hold_key(hold_id: int) -> int:
    """A hold's key among Taken.moving, which is keyed by appointment id: its id negated, so the two never meet. A
    hold being confirmed is "moving" as a reschedule's appointment is: taken for everyone but its own confirmation."""
    return -hold_id


class Taken:
    """Time already taken, as sorted, merged spans; decisions add to it as they confirm.

    Appointments a batch may move (reschedules) are kept apart, by id, in `moving`: taken for everyone, except for
    the reschedule of that very appointment (its own current time is free to it), and released once it moved.
    """

    __slots__ = ("ends", "moving", "starts")

    def __init__(self, spans: Iterable[Span] = (), moving: dict[int, Span] | None = None) -> None:
        self.starts: list[datetime] = []
        self.ends: list[datetime] = []
        self.moving = moving or {}
        for start, end in sorted(spans):
            if self.ends and start <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)

    def clash(self, start: datetime, end: datetime, moving_id: int | None = None) -> Span | None:
        """The taken span that [start, end) overlaps, if any (the only candidate: the last one starting before
        `end`; every earlier one ends before it starts), not counting appointment `moving_id`'s own time."""
        i = bisect_left(self.starts, end) - 1
        if i >= 0 and self.ends[i] > start:
            return self.starts[i], self.ends[i]
        for appointment_id, (taken_start, taken_end) in self.moving.items():  # a batch's few reschedules
            if appointment_id != moving_id and taken_start < end and taken_end > start:
                return taken_start, taken_end
        return None

    def release(self, appointment_id: int) -> None:
        """A moving appointment has moved: its old time is free from now on."""
        self.moving.pop(appointment_id, None)

    def take(self, start: datetime, end: datetime) -> None:
        """Add [start, end), merging it with the spans it overlaps or touches."""
        first = bisect_left(self.ends, start)  # the first span ending at or after `start`
        last = bisect_right(self.starts, end)  # past the last span starting at or before `end`
        if first < last:
            start, end = min(start, self.starts[first]), max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]

    def free_in(self, start: datetime, end: datetime) -> list[Span]:
        """[start, end) less the time taken: a walk over the taken spans inside it only."""
        free = []
        i = bisect_right(self.ends, start)  # the first taken span ending after `start`
        cursor = start
        while i < len(self.starts) and self.starts[i] < end:
            if self.starts[i] > cursor:
                free.append((cursor, self.starts[i]))
            cursor = max(cursor, self.ends[i])
            i += 1
        if cursor < end:
            free.append((cursor, end))
        return free


# --- weekly hours on the wall clock, as instants -----------------------------------------------------------------

def wall_to_utc(day: date, minute: int, zone: ZoneInfo, *, is_end: bool) -> datetime:
    """The instant (naive UTC) of `minute` after local midnight of `day` in `zone`.

    A wall time that occurs twice (autumn) is its first occurrence as a start and its second as an end, so an
    interval spanning the repeated hour holds both. One that does not occur (spring) is the instant the clocks
    jump, so an interval loses exactly the skipped time and no slot names a time that does not exist.
    """
    first, last = _occurrences(day, minute, zone)
    return last if is_end else first


def _occurrences(day: date, minute: int, zone: ZoneInfo) -> Span:
    """The first and the last instant whose clock reads `minute` after midnight of `day`: one instant twice unless
    the time is repeated; the jump, twice, for a skipped time."""
    local = datetime.combine(day, time()) + timedelta(minutes=minute)
    earlier = local.replace(tzinfo=zone, fold=0).astimezone(UTC).replace(tzinfo=None)
    later = local.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(tzinfo=None)
    if earlier <= later:  # repeated (fold 0 is the first occurrence), or the one instant it names
        return earlier, later
    jump = _jump_instant(zone, later, earlier)  # skipped: fold 0 read it with the offset before the jump
    return jump, jump


def _jump_instant(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant the offset changes, between `before` (old offset) and `after` (new), to the minute."""
    old = _offset_at(zone, before)
    while after - before > MINUTE:
        middle = before + (after - before) // MINUTE // 2 * MINUTE
        if _offset_at(zone, middle) == old:
            before = middle
        else:
            after = middle
    return after


def _offset_at(zone: ZoneInfo, instant: datetime) -> timedelta | None:
    return instant.replace(tzinfo=UTC).astimezone(zone).utcoffset()


# A clinic's weekly hours repeat, and so do the days read: the same (day, interval, zone) is laid out again for every
# doctor and every request. Pure, so cached (about 4 MB at its bound), and immutable: a tuple.
@lru_cache(maxsize=32_768)
def wall_spans(day: date, start_minute: int, end_minute: int, zone: ZoneInfo) -> tuple[Span, ...]:
    """The instants whose wall clock on `day` reads a time in [start, end): one span, or two when an end lies inside
    the repeated hour.

    From the start's first occurrence to the end's last holds the whole repeated hour when the interval spans it,
    but when an end lies inside it, that hull also holds instants whose clock reads a time outside the hours:
    01:00-02:00 in Berlin on the autumn night would run to 02:00 winter time, an hour past its end on the clock
    (02:00-03:00 summer time), and 02:30-04:00 would hold 02:00-02:30 winter time. Those are cut out: the first
    pass through the repeated hour is kept up to the end, the second from the start.
    """
    first, start_again = _occurrences(day, start_minute, zone)
    end_first, last = _occurrences(day, end_minute, zone)
    if start_again == first and end_first == last:  # neither end repeated: the clock runs straight through
        return ((first, last),) if first < last else ()
    # The instant the clocks go back: the first one reading the repeated hour a second time.
    back = _jump_instant(zone, first, start_again) if start_again != first else _jump_instant(zone, end_first, last)
    first_pass, second_pass = (first, min(end_first, back)), (max(start_again, back), last)
    if first_pass[1] == second_pass[0]:  # the start is where the repeated hour begins: one span after all
        return ((first_pass[0], second_pass[1]),)
    return tuple((s, e) for s, e in (first_pass, second_pass) if s < e)


def weekly_spans(hours: Iterable[WeeklyInterval], zone: ZoneInfo, start: datetime, end: datetime) -> list[Span]:
    """Every occurrence of the weekly hours that touches [start, end), as UTC spans."""
    by_weekday: dict[int, list[WeeklyInterval]] = {}
    for interval in hours:
        by_weekday.setdefault(interval.weekday, []).append(interval)
    if not by_weekday:
        return []
    spans = []
    day = (start.replace(tzinfo=UTC).astimezone(zone).date() - timedelta(days=1))
    last_day = end.replace(tzinfo=UTC).astimezone(zone).date() + timedelta(days=1)
    while day <= last_day:
        for interval in by_weekday.get(day.isoweekday(), ()):
            spans += [(span_start, span_end)
                      for span_start, span_end in wall_spans(day, interval.start_minute, interval.end_minute, zone)
                      if span_start < end and span_end > start]
        day += timedelta(days=1)
    return spans


def available_intervals(weekly: Iterable[Span], windows: Iterable[tuple[datetime, datetime, int]],
                        time_off: Iterable[Span]) -> list[Available]:
    """(weekly hours ∪ windows) − time off, sorted. Overlapping intervals merge; touching ones stay apart (each
    keeps its own grid, as two windows back to back do)."""
    merged: list[Available] = []
    sources = sorted([Available(s, e) for s, e in weekly] + [Available(s, e, i) for s, e, i in windows],
                     key=lambda a: (a.start, a.end))
    for source in sources:
        if merged and source.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Available(last.start, max(last.end, source.end), None)
        else:
            merged.append(source)
    off = Taken(time_off)
    return [Available(s, e, interval.window_id if (s, e) == (interval.start, interval.end) else None)
            for interval in merged for s, e in off.free_in(interval.start, interval.end)]


# --- the rule -----------------------------------------------------------------------------------------------------

class DoctorTime:
    """A doctor's available intervals and blocked time, as the booking rules see them."""

    __slots__ = ("available", "available_ends", "available_starts", "taken")

    def __init__(self, available: list[Available], taken: Iterable[Span],
                 moving: dict[int, Span] | None = None) -> None:
        self.available = available  # sorted by start; overlapping ones were merged
        self.available_starts = [a.start for a in available]
        self.available_ends = [a.end for a in available]
        self.taken = Taken(taken, moving)

    def interval_holding(self, start: datetime, end: datetime) -> Available | None:
        i = bisect_right(self.available_starts, start) - 1
        # Touching intervals may hold `start`, the one before ending exactly there: either holds it wholly or none.
        if i >= 0 and self.available[i].end >= end:
            return self.available[i]
        return None

    def why_not(self, start: datetime, end: datetime, now: datetime, rules: Rules = NO_RULES,
                moving_id: int | None = None) -> str | None:
        """Why [start, end) of this kind cannot be booked at `now`, or None if it can: THE booking rule. A
        reschedule names the appointment it moves (`moving_id`), whose own current time does not stand in its way."""
        if start <= now:
            return IN_PAST
        if start < now + rules.min_notice:
            return TOO_SOON
        if rules.max_ahead is not None and start > now + rules.max_ahead:
            return TOO_FAR_AHEAD
        if self.interval_holding(start, end) is None:
            return OUTSIDE_AVAILABILITY
        if self.taken.clash(*rules.blocked(start, end), moving_id) is not None:
            return SLOT_TAKEN
        return None

    def take(self, start: datetime, end: datetime, rules: Rules = NO_RULES) -> None:
        self.taken.take(*rules.blocked(start, end))

    def slots(self, length: timedelta, earliest: datetime, latest: datetime, now: datetime, limit: int,
              rules: Rules = NO_RULES) -> tuple[list[tuple[datetime, datetime, Available]], datetime | None]:
        """Bookable slots of `length` on each available interval's grid (from its start), within
        [earliest, latest): at most `limit` of them, and the start of the next one if there are more."""
        found: list[tuple[datetime, datetime, Available]] = []
        first = max(bisect_right(self.available_ends, earliest) - 1, 0)
        for interval in self.available[first:]:
            if interval.start >= latest:
                break
            start: datetime | None = _grid_point_at_or_after(interval.start, length, max(earliest, interval.start))
            stop = min(interval.end, latest)
            while start is not None and (end := _plus(start, length)) is not None and end <= stop:
                reason = self.why_not(start, end, now, rules)
                if reason is None:
                    if len(found) == limit:
                        return found, start
                    found.append((start, end, interval))
                    start = end
                    continue
                if reason == TOO_FAR_AHEAD:  # so is every later slot
                    return found, None
                if reason == SLOT_TAKEN:  # the first start whose buffer clears what it ran into
                    resume = self.taken.clash(*rules.blocked(start, end))[1] + rules.buffer_before  # type: ignore[index]
                elif reason in (IN_PAST, TOO_SOON):
                    resume = max(now + rules.min_notice, now + timedelta(microseconds=1))
                else:  # outside: cannot happen on an interval's own grid
                    break
                start = _grid_point_at_or_after(interval.start, length, max(resume, start + timedelta.resolution))
        return found, None


def _grid_point_at_or_after(origin: datetime, step: timedelta, at: datetime) -> datetime | None:
    """The first point of the grid origin + k·step at or after `at` (None past the year 9999)."""
    return _plus(origin, -((origin - at) // step) * step)


def _plus(moment: datetime, delta: timedelta) -> datetime | None:
    """moment + delta, or None past the year 9999."""
    try:
        return moment + delta
    except OverflowError:
        return None
