"""Whether a span of a doctor's time can be booked: the one answer for slot reads and the worker's decision.

Both build a `DoctorTime` from what they read (windows and the time already taken) and ask it: a slot read for each
point of each window's grid, the decision for each request in turn. Every question is a binary search over sorted
spans, so the work grows as n log n in what a doctor (or an attacker) has stored, never as windows × appointments.

Times are naive UTC, spans half-open: [start, end).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta

Span = tuple[datetime, datetime]

# Machine-readable reasons a span cannot be booked.
IN_PAST = "in_past"
OUTSIDE_AVAILABILITY = "outside_availability"
SLOT_TAKEN = "slot_taken"


class Taken:
    """Time already taken, as sorted, merged spans; decisions add to it as they confirm."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self.starts: list[datetime] = []
        self.ends: list[datetime] = []
        for start, end in sorted(spans):
            if self.ends and start <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)

    def clash(self, start: datetime, end: datetime) -> Span | None:
        """The taken span that [start, end) overlaps, if any (the only candidate: the last one starting before
        `end`; every earlier one ends before it starts)."""
        i = bisect_left(self.starts, end) - 1
        if i >= 0 and self.ends[i] > start:
            return self.starts[i], self.ends[i]
        return None

    def take(self, start: datetime, end: datetime) -> None:
        """Add [start, end), merging it with the spans it overlaps or touches."""
        first = bisect_left(self.ends, start)  # the first span ending at or after `start`
        last = bisect_right(self.starts, end)  # past the last span starting at or before `end`
        if first < last:
            start, end = min(start, self.starts[first]), max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]


class DoctorTime:
    """A doctor's windows and taken time, as the booking rules see them."""

    __slots__ = ("taken", "window_ends", "window_starts", "windows")

    def __init__(self, windows: Iterable[tuple[datetime, datetime, int]], taken: Iterable[Span]) -> None:
        self.windows = sorted(windows)  # published windows never overlap (refused under the doctor's lock)
        self.window_starts = [w[0] for w in self.windows]
        self.window_ends = [w[1] for w in self.windows]
        self.taken = Taken(taken)

    def window_holding(self, start: datetime, end: datetime) -> tuple[datetime, datetime, int] | None:
        i = bisect_right(self.window_starts, start) - 1
        if i >= 0 and self.window_ends[i] >= end:
            return self.windows[i]
        return None

    def free_in(self, start: datetime, end: datetime) -> list[Span]:
        """[start, end) less the time taken: a walk over the taken spans inside it only."""
        free = []
        taken = self.taken
        i = bisect_right(taken.ends, start)  # the first taken span ending after `start`
        cursor = start
        while i < len(taken.starts) and taken.starts[i] < end:
            if taken.starts[i] > cursor:
                free.append((cursor, taken.starts[i]))
            cursor = max(cursor, taken.ends[i])
            i += 1
        if cursor < end:
            free.append((cursor, end))
        return free

    def why_not(self, start: datetime, end: datetime, now: datetime) -> str | None:
        """Why [start, end) cannot be booked at `now`, or None if it can: THE booking rule."""
        if start <= now:
            return IN_PAST
        if self.window_holding(start, end) is None:
            return OUTSIDE_AVAILABILITY
        if self.taken.clash(start, end) is not None:
            return SLOT_TAKEN
        return None

    def slots(self, step: timedelta, earliest: datetime, latest: datetime, now: datetime,
              limit: int) -> tuple[list[tuple[datetime, datetime, int]], datetime | None]:
        """Bookable slots of length `step` on each window's grid (from its start), within [earliest, latest):
        at most `limit` of them, and the start of the next one if there are more."""
        found: list[tuple[datetime, datetime, int]] = []
        first = max(bisect_right(self.window_ends, earliest) - 1, 0)
        for window_start, window_end, window_id in self.windows[first:]:
            if window_start >= latest:
                break
            start: datetime | None = _grid_point_at_or_after(window_start, step, max(earliest, window_start))
            stop = min(window_end, latest)
            while start is not None and (end := _plus(start, step)) is not None and end <= stop:
                reason = self.why_not(start, end, now)
                if reason is None:
                    if len(found) == limit:
                        return found, start
                    found.append((start, end, window_id))
                    start = end
                elif (clash := self.taken.clash(start, end)) is not None:  # jump past it, staying on the grid
                    start = _grid_point_at_or_after(window_start, step, clash[1])
                else:  # in the past: the first grid point after now
                    start = _grid_point_at_or_after(window_start, step, now + timedelta(microseconds=1))
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
