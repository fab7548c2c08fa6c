"""The booking decision: run by the worker, under the doctors' row locks, in one transaction.

`decide` is pure (data in, decisions out); `decide_pending_requests` is the I/O around it (for one doctor or a group),
and `decide_for_doctors` the transaction and its retries.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.core import faults, history
from service.core.availability import SLOT_TAKEN, DoctorTime, Rules, Taken, hold_key
from service.core.db import RETRYABLE_ERRORS, Connection, Database, Row, Statement, mysql_error_code
from service.core.outbox import (
    CONFIRMED,
    REJECTED,
    RESCHEDULED,
    Event,
    appointment_event,
    record_events,
    rfc3339,
    sequence_at,
)
from service.core.queue import Decided, Decision
from service.core.schedule import doctor_time_from_rows, range_bounds, rules_of
from service.core.times import utcnow
from service.core.zones import zone_named

log = logging.getLogger("service.booking")

# Machine-readable reasons a request is rejected or failed, beyond availability's (IN_PAST, TOO_SOON, ...).
PATIENT_BUSY = "patient_busy"
DOCTOR_NOT_FOUND = "doctor_not_found"
TYPE_UNAVAILABLE = "appointment_type_unavailable"  # deactivated between the request and its decision
RETRIES_EXHAUSTED = "retries_exhausted"
# A reschedule's appointment was cancelled, moved, checked in (...) or began before the move was decided.
APPOINTMENT_NOT_CONFIRMED = "appointment_not_confirmed"
APPOINTMENT_STARTED = "appointment_started"
# A confirm_hold's hold was confirmed already, released or expired (without a pending confirmation) meanwhile.
HOLD_NOT_HELD = "hold_not_held"
TOO_MANY_HOLDS = "too_many_holds"  # the patient has HOLDS_PER_PATIENT live holds already
# Requests of a batch whose times lie closer than this are read from MySQL in one range; farther ones in another,
# so a batch never reads a doctor's whole calendar between two far-apart requests.
NEARBY = timedelta(days=1)
# A decision reads its doctors' ranges (as many as their requests, in the worst case), and its patients' own time
# in them, with at most this many ranges and (range, patient) pairs a statement: each is an interval of an index
# that the range optimizer keeps, until it has built too many (MariaDB's optimizer_max_sel_args, MySQL's
# range_optimizer_max_mem_size) and scans the whole table instead. MariaDB 10.11's EXPLAIN: ranges still at 1,000
# terms or 1,024 pairs, the whole appointments table at 5,000 terms or 2,000 pairs.
RANGES_A_STATEMENT = 64
PATIENTS_A_STATEMENT = 256


@dataclass(slots=True)
class PendingRequest:
    id: int
    patient_id: int
    start_time: datetime
    end_time: datetime
    notes: str | None
    appointment_type_id: int | None = None
    reschedules: int | None = None  # the appointment a reschedule moves
    kind: str = "book"  # book | reschedule | hold | confirm_hold
    hold_id: int | None = None  # the hold a confirm_hold turns into an appointment
    requested_by: int | None = None  # staff who asked on the patient's behalf
    created_at: datetime | None = None  # when it was asked for (its `requested` history row's time)
    requested_in_history: bool = False  # stored before its decision wrote that row (migration 0014): it has one
    doctor_id: int = 0  # the doctor it asks for (a decision's requests may be of several)


@dataclass(slots=True)
class HeldSlot:
    """A hold a confirm_hold of the batch would turn into an appointment, as it stood once its doctor's row was
    locked."""

    id: int
    patient_id: int
    status: str
    start_time: datetime
    end_time: datetime
    appointment_type_id: int | None
    buffer_before_minutes: int
    buffer_after_minutes: int
    notes: str | None
    waitlist_entry_id: int | None


@dataclass(slots=True)
class Holds:
    """What a batch's decision knows of holds: those its confirmations name (by id), how many live holds each of its
    patients has, and how many one may have (HOLDS_PER_PATIENT)."""

    holding: dict[int, HeldSlot] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    per_patient: int = 3


@dataclass(slots=True)
class Moving:
    """An appointment a reschedule of the batch would move, as it stood once its doctor's row was locked."""

    id: int
    doctor_id: int
    status: str
    start_time: datetime
    end_time: datetime
    patient_id: int


def decide(
    requests: list[PendingRequest], doctor: DoctorTime, patients: dict[int, Taken], now: datetime,
    types: dict[int, Row] | None = None, moving: dict[int, Moving] | None = None, holds: Holds | None = None,
) -> list[Decision]:
    """Decide requests in order, each seeing the ones confirmed before it, with the rules of its appointment type
    (`types`: the doctor's active ones, by id). A reschedule is a booking that may use its own appointment's
    current time (`moving`, by id), and that frees that time once it succeeds. A hold is decided as a booking (and
    counts against the patient's limit); a confirm_hold may use its hold's own time (`holds.holding`), with the
    hold's buffers: notice and horizon were checked when it was held. Pure: no I/O."""
    types = types or {}
    moving = moving or {}
    holds = holds or Holds()
    decisions = []
    for request in requests:
        start, end, type_id, moves, held = request.start_time, request.end_time, request.appointment_type_id, None, None
        patient = patients.setdefault(request.patient_id, Taken())
        rules = rules_of(types.get(type_id))  # no type: no rules beyond "in the future"
        own: int | None = request.reschedules  # the key of the time that is free to this request (Taken.moving)
        reason: str | None = None
        if request.reschedules is not None:
            moves = moving.get(request.reschedules)
            if moves is None or moves.status != "confirmed":
                reason = APPOINTMENT_NOT_CONFIRMED
            elif moves.start_time <= now:
                reason = APPOINTMENT_STARTED
        elif request.kind == "confirm_hold" and request.hold_id is not None:
            held, own, type_id = holds.holding.get(request.hold_id), hold_key(request.hold_id), None
            if held is None or held.status != "held" or held.patient_id != request.patient_id:
                reason = HOLD_NOT_HELD
            else:
                start, end = held.start_time, held.end_time
                rules = Rules(timedelta(minutes=held.buffer_before_minutes),
                              timedelta(minutes=held.buffer_after_minutes))
        elif request.kind == "hold" and holds.counts.get(request.patient_id, 0) >= holds.per_patient:
            reason = TOO_MANY_HOLDS
        if reason is None and type_id is not None and type_id not in types:
            reason = TYPE_UNAVAILABLE
        reason = reason or doctor.why_not(start, end, now, rules, own)
        if reason is None and patient.clash(start, end, own) is not None:
            reason = PATIENT_BUSY
        if reason is not None:
            decisions.append(Decision(request.id, "rejected", reason, taken=shown_taken(request, reason)))
            continue
        doctor.take(start, end, rules)
        patient.take(start, end)
        if moves is not None:  # its old time is free from here on, and it cannot be moved twice
            doctor.taken.release(moves.id)
            patient.release(moves.id)
            moves.status = "rescheduled"
        if held is not None and own is not None:  # the hold's time is the appointment's now; it is confirmed once
            doctor.taken.release(own)
            patient.release(own)
            held.status = "confirmed"
        if request.kind == "hold":
            holds.counts[request.patient_id] = holds.counts.get(request.patient_id, 0) + 1
        decisions.append(Decision(request.id, "confirmed", rescheduled_from=request.reschedules,
                                  hold_id=request.hold_id, taken=shown_taken(request, None)))
    return decisions


def shown_taken(request: PendingRequest, reason: str | None) -> tuple[datetime, datetime, int | None] | None:
    """The span and type a decision shows taken, for anyone asking for the same (api/schedule_cache.py's KnownTaken):
    a booking's or a move's once confirmed, a booking's rejected slot_taken. Not a hold's confirmation (its time is
    the hold's), nor a move rejected slot_taken (that may be a clash its own patient can resolve)."""
    if (reason is None and request.kind in ("book", "reschedule")) or (reason == SLOT_TAKEN and request.kind == "book"):
        return request.start_time, request.end_time, request.appointment_type_id
    return None


def nearby_clusters(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Spans merged where they lie within NEARBY of each other: the ranges one read each covers."""
    ranges: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if ranges and start <= ranges[-1][1] + NEARBY:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges


RangeRead = tuple[int, datetime, datetime, tuple[int, ...]]  # a doctor, a range of theirs, the patients asking in it


def range_reads(doctor_id: int, asking: list[tuple[datetime, datetime, int]]) -> list[RangeRead]:
    """The ranges to read for what patients ask of a doctor (start, end, patient): one a cluster of nearby spans
    (nearby_clusters, in order), each with the patients asking in it, since a patient's own time matters only around
    what they ask for."""
    ranges = nearby_clusters([(start, end) for start, end, _ in asking])
    starts = [start for start, _ in ranges]
    patients: list[set[int]] = [set() for _ in ranges]
    for start, _, patient_id in asking:
        patients[bisect_right(starts, start) - 1].add(patient_id)
    return [(doctor_id, start, end, tuple(sorted(of_range))) for (start, end), of_range in zip(ranges, patients,
                                                                                                strict=True)]


def schedule_reads(reads: list[RangeRead], now: datetime) -> list[Statement]:
    """The list_schedules_between statements that read these doctors' ranges and the patients' own time in them,
    each within RANGES_A_STATEMENT ranges and PATIENTS_A_STATEMENT (range, patient) pairs (a range with more
    patients is read once a share of them)."""
    terms = [(d, start, end, patients[i:i + PATIENTS_A_STATEMENT]) for d, start, end, patients in reads
             for i in range(0, max(len(patients), 1), PATIENTS_A_STATEMENT)]  # none skipped, ever
    chunks: list[list[RangeRead]] = []
    pairs = 0
    for term in terms:
        if not chunks or len(chunks[-1]) == RANGES_A_STATEMENT or pairs + len(term[3]) > PATIENTS_A_STATEMENT:
            chunks.append([])
            pairs = 0
        chunks[-1].append(term)
        pairs += len(term[3])
    return [("list_schedules_between", {
        "doctor_ids": tuple(sorted({d for d, *_ in chunk})), "now": now,
        "ranges": [{"doctor_id": d, "patient_ids": patients, **range_bounds(start, end)}
                   for d, start, end, patients in chunk]})
        for chunk in chunks]


class LockOrder(Exception):
    """The batch moves appointments of doctors whose ids are below a doctor it holds: lock them first, in id order."""

    def __init__(self, doctor_ids: set[int]) -> None:
        super().__init__(sorted(doctor_ids))
        self.doctor_ids = doctor_ids


def pending_request(row: Row, doctor_id: int) -> PendingRequest:
    return PendingRequest(row["id"], row["patient_id"], row["start_time"], row["end_time"], row["notes"],
                          row["appointment_type_id"], row["reschedules"], row["kind"], row["hold_id"],
                          row["requested_by"], row["created_at"], bool(row["requested_in_history"]), doctor_id)


async def decide_pending_requests(tx: Connection, doctor_ids: Iterable[int], batch_size: int,
                                  locked_first: frozenset[int] = frozenset(), policy: HoldPolicy | None = None,
                                  ) -> list[Decided]:
    """Decide up to `batch_size` pending requests of each of these doctors inside the caller's transaction: one
    Decided a doctor, in ascending id order.

    The doctors' row locks serialize every writer of their schedules (bookings, cancellations, windows, weekly
    hours, time off, types); the patients' row locks serialize bookings of one patient with different doctors. Every
    lock is taken in ascending id order, doctors first, then patients, so concurrent decisions (of one doctor or of
    a group) cannot deadlock on each other. A reschedule from another doctor also takes that doctor's lock:
    `locked_first` are such doctors below one of the group's, known from an earlier try that raised LockOrder. Reads
    come after the locks, and the session runs READ COMMITTED, so they see everything committed before.

    The doctors are decided in turn, in one transaction: a patient's booking confirmed with one doctor is seen by
    the decision of the next (the patients' time is shared), and all is written in a few round trips, whatever the
    number of doctors (the worker's group commit, worker/groups.py).
    """
    doctor_ids = sorted(set(doctor_ids))
    locks = tuple(sorted({*doctor_ids, *locked_first}))
    lock_rows, *pending = await tx.fetch_batch([  # one round trip: the locks first, then each doctor's oldest requests
        ("lock_doctors", {"ids": locks}),
        *(("lock_pending_requests_of_doctor", {"doctor_id": d, "limit": batch_size}) for d in doctor_ids)])
    now = utcnow()
    batches = {d: [pending_request(row, d) for row in rows] for d, rows in zip(doctor_ids, pending, strict=True)}
    decisions: dict[int, list[Decision]] = {d: [] for d in doctor_ids}
    requests = [r for d in doctor_ids for r in batches[d]]
    if not requests:
        return [Decided(d, now, []) for d in doctor_ids]
    zones = {row["id"]: row["timezone"] for row in lock_rows if row["role"] == "Doctor"}
    for d in doctor_ids:
        if d not in zones:
            decisions[d] = [Decision(r.id, "rejected", DOCTOR_NOT_FOUND) for r in batches[d]]
    # Each doctor's active types that its requests name (a request naming another doctor's type finds none).
    types_of = {d: {r["type_id"]: {name: r[name] for name in TYPE_RULES} for r in rows if r["type_id"] is not None}
                for d, rows in zip(doctor_ids, pending, strict=True)}
    types = {type_id: rules for of_doctor in types_of.values() for type_id, rules in of_doctor.items()}
    policy = policy or HoldPolicy()
    holds = Holds(per_patient=policy.per_patient)
    moving: dict[int, Moving] = {}
    if deciding := [d for d in doctor_ids if d in zones and batches[d]]:
        live = [r for d in deciding for r in batches[d]]
        if moving_ids := tuple({r.reschedules for r in live if r.reschedules is not None}):
            moving = await lock_moving_appointments(tx, set(locks), moving_ids, locked_first)
        holding = await confirmed_holds(tx, {d: batches[d] for d in deciding})
        patient_ids = tuple(sorted({r.patient_id for r in live}))
        reads = {d: range_reads(d, [(r.start_time, r.end_time, r.patient_id) for r in batches[d]]) for d in deciding}
        ranges = {d: [(start, end) for _, start, end, _ in reads[d]] for d in deciding}
        # One round trip: the patients' locks, then (under them) their live holds if the group makes holds, and the
        # schedules of every doctor's ranges (one statement, or a few for many ranges or patients).
        counting_holds = any(r.kind == "hold" for r in live)  # under the patients' locks: none overrun
        _, *read = await tx.fetch_batch([
            ("lock_users", {"ids": patient_ids}),
            *([("count_live_holds_of_patients", {"ids": patient_ids, "now": now})] if counting_holds else []),
            *schedule_reads([read for d in deciding for read in reads[d]], now)])
        if counting_holds:
            holds.counts = {row["patient_id"]: row["live"] for row in read.pop(0)}
        moving_keys = set(moving) | {hold_key(hold_id) for held in holding.values() for hold_id in held}
        schedule_rows: dict[int, list[Row]] = defaultdict(list)
        patient_taken: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        patient_moving: dict[int, dict[int, tuple[datetime, datetime]]] = defaultdict(dict)
        for row in (row for rows in read for row in rows):
            if row["kind"] not in PATIENT_ROWS:
                schedule_rows[row["doctor_id"]].append(row)
                continue
            key = row["id"] if row["kind"] == "patient" else hold_key(row["id"])
            if key in moving_keys:
                patient_moving[row["patient_id"]][key] = (row["start_time"], row["end_time"])
            else:  # a row read for two ranges counts once (Taken merges spans)
                patient_taken[row["patient_id"]].append((row["start_time"], row["end_time"]))
        patients = {p: Taken(patient_taken.get(p, ()), patient_moving.get(p)) for p in patient_ids}
        for d in deciding:
            doctor = doctor_time_from_rows(schedule_rows[d], zone_named(zones[d]), ranges[d], moving_keys)
            decisions[d] = decide(batches[d], doctor, patients, now, types_of[d], moving,
                                  Holds(holding.get(d, {}), holds.counts, policy.per_patient))
        holds.holding = {hold_id: held for of_doctor in holding.values() for hold_id, held in of_doctor.items()}
    await record_decisions(tx, requests, [x for d in doctor_ids for x in decisions[d]], now, types, moving, holds,
                           policy)
    if faults.armed:
        faults.hit("before_commit")
    return [Decided(d, now, decisions[d], sorted(
        {moving[x.rescheduled_from].doctor_id for x in decisions[d] if x.rescheduled_from} - {d}))
        for d in doctor_ids]


async def confirmed_holds(tx: Connection, batches: dict[int, list[PendingRequest]]) -> dict[int, dict[int, HeldSlot]]:
    """The holds the doctors' confirm_hold requests name, each doctor's own only, by doctor and hold id; one round
    trip if any."""
    asked = {d: tuple({r.hold_id for r in requests if r.kind == "confirm_hold" and r.hold_id is not None})
             for d, requests in batches.items()}
    asking = [d for d, hold_ids in asked.items() if hold_ids]
    if not asking:
        return {}
    found = await tx.fetch_batch([("find_holds_by_id", {"ids": asked[d], "doctor_id": d}) for d in asking])
    return {d: {row["id"]: HeldSlot(**row) for row in rows} for d, rows in zip(asking, found, strict=True)}


async def lock_moving_appointments(tx: Connection, locked: set[int], appointment_ids: tuple[int, ...],
                                   locked_first: frozenset[int]) -> dict[int, Moving]:
    """The appointments the batch's reschedules would move, read once their doctors' rows are locked. Doctors
    above every one locked (`locked`) are locked now (ascending order holds); one below that is not locked yet
    means starting over with it locked first (LockOrder)."""
    doctors = {row["id"]: row["doctor_id"] for row in
               await tx.fetch_all("doctors_of_appointments", {"ids": appointment_ids})}
    others = set(doctors.values()) - locked
    highest = max(locked)
    if missing := {d for d in others if d < highest}:
        raise LockOrder(missing | locked_first)
    if above := sorted(others):
        await tx.fetch_all("lock_users", {"ids": tuple(above)})
    return {row["id"]: Moving(row["id"], row["doctor_id"], row["status"], row["start_time"], row["end_time"],
                              row["patient_id"])
            for row in await tx.fetch_all("find_appointments_by_id", {"ids": appointment_ids})}


# The columns of a request's type that a decision uses (lock_pending_requests_of_doctor reads them with it).
TYPE_RULES = ("buffer_before_minutes", "buffer_after_minutes", "min_notice_minutes", "max_days_ahead")
PATIENT_ROWS = ("patient", "patient_hold")  # list_schedules_between's rows of the batch's patients' own time


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """HOLD_SECONDS and HOLDS_PER_PATIENT, as a decision needs them."""

    seconds: int = 300
    per_patient: int = 3


NO_BUFFERS = {"buffer_before_minutes": 0, "buffer_after_minutes": 0}


def buffers_of(appointment_type: Row | None) -> dict[str, int]:
    """The buffers an appointment keeps from its type (none without one)."""
    if appointment_type is None:
        return NO_BUFFERS
    return {name: appointment_type[name] for name in NO_BUFFERS}


def appointment_row(request: PendingRequest, now: datetime, types: dict[int, Row], holds: Holds) -> Row:
    """The appointment a confirmed request makes: its own span and type's buffers, or its hold's."""
    row = {"booking_request_id": request.id, "doctor_id": request.doctor_id, "patient_id": request.patient_id,
           "appointment_type_id": request.appointment_type_id, "start_time": request.start_time,
           "end_time": request.end_time, "notes": request.notes, "now": now, "rescheduled_from": request.reschedules,
           **buffers_of(types.get(request.appointment_type_id))}
    if request.kind == "confirm_hold" and request.hold_id in holds.holding:
        held = holds.holding[request.hold_id]
        row.update(appointment_type_id=held.appointment_type_id, start_time=held.start_time,
                   end_time=held.end_time, notes=held.notes, buffer_before_minutes=held.buffer_before_minutes,
                   buffer_after_minutes=held.buffer_after_minutes)
    return row


async def record_holds(tx: Connection, held: list[PendingRequest], decisions: list[Decision],
                       now: datetime, types: dict[int, Row], seconds: int) -> list[Row]:
    """Insert the holds of a batch's confirmed hold requests, mark the requests confirmed with their hold ids; the
    history rows to append."""
    expires_at = now + timedelta(seconds=seconds)
    await tx.execute_many("insert_hold", [
        {"doctor_id": r.doctor_id, "patient_id": r.patient_id, "appointment_type_id": r.appointment_type_id,
         "start_time": r.start_time, "end_time": r.end_time, "notes": r.notes, "expires_at": expires_at,
         "booking_request_id": r.id, "waitlist_entry_id": None, "now": now,
         **buffers_of(types.get(r.appointment_type_id))} for r in held])
    ids = tuple(r.id for r in held)
    await tx.execute("confirm_hold_requests", {"ids": ids, "now": now})
    hold_ids = {row["booking_request_id"]: row["id"] for row in await tx.fetch_all("holds_of_requests", {"ids": ids})}
    for d in decisions:
        if d.request_id in hold_ids:
            d.hold_id = hold_ids[d.request_id]
    return [history.entry("held", now, request_id=r.id, to_status="held") for r in held]


async def record_decisions(
    tx: Connection, requests: list[PendingRequest], decisions: list[Decision], now: datetime,
    types: dict[int, Row], moving: dict[int, Moving] | None = None, holds: Holds | None = None,
    policy: HoldPolicy | None = None,
) -> None:
    """Write a batch's decisions: appointments made (and moved), holds made and confirmed, requests decided, their
    history and their events. Whatever needs no answer from MySQL goes in one round trip at the end."""
    holds = holds or Holds()
    by_id = {r.id: r for r in requests}
    writes = tx.batch()
    changes = await requested_rows(tx, requests, now)
    made = [by_id[d.request_id] for d in decisions if d.status == "confirmed"]
    if held := [r for r in made if r.kind == "hold"]:
        changes += await record_holds(tx, held, decisions, now, types, (policy or HoldPolicy()).seconds)
    confirmed = [r for r in made if r.kind != "hold"]  # those that make an appointment
    if confirmed:
        if moved := tuple(r.reschedules for r in confirmed if r.reschedules is not None):
            # Before the inserts: a move to the same start needs the old appointment's start let go of first.
            await tx.execute("mark_appointments_rescheduled", {"ids": moved, "now": now})
        appointments = [appointment_row(r, now, types, holds) for r in confirmed]
        confirmed_ids = tuple(r.id for r in confirmed)
        if len(appointments) == 1:  # the usual batch: the insert itself says the new id
            _, appointment_id = await tx.execute("insert_appointment", appointments[0])
            appointment_ids = {confirmed_ids[0]: appointment_id}
        else:  # a multi-row insert's ids need not be consecutive (MySQL 8's interleaved auto-increment)
            await tx.execute_many("insert_appointment", appointments)
            appointment_ids = {row["booking_request_id"]: row["id"] for row in
                               await tx.fetch_all("appointments_of_requests", {"ids": confirmed_ids})}
        await writes.execute("confirm_booking_requests", {"ids": confirmed_ids, "now": now})
        if moved:
            await writes.execute_many("link_rescheduled_appointment", [
                {"id": r.reschedules, "moved_to": appointment_ids[r.id]}
                for r in confirmed if r.reschedules is not None])
        if held_confirmed := [r for r in confirmed if r.kind == "confirm_hold"]:
            confirmations = [{"id": r.hold_id, "appointment_id": appointment_ids[r.id], "now": now}
                             for r in held_confirmed]
            await writes.execute_many("mark_hold_confirmed", confirmations)
            await writes.execute_many("mark_waitlist_entry_booked", confirmations)  # an offer from the waitlist
        for d in decisions:
            if d.status == "confirmed" and by_id[d.request_id].kind != "hold":
                d.appointment_id = appointment_ids[d.request_id]
                if d.rescheduled_from is not None:
                    changes.append(history.entry("rescheduled", now, appointment_id=d.rescheduled_from,
                                                 request_id=d.request_id, from_status="confirmed",
                                                 to_status="rescheduled"))
                changes.append(history.entry("confirmed", now, appointment_id=d.appointment_id,
                                             request_id=d.request_id, to_status="confirmed"))
    rejected: dict[str, list[int]] = defaultdict(list)
    for d in decisions:
        if d.status == "rejected":
            rejected[d.reason or ""].append(d.request_id)
            changes.append(history.entry("rejected", now, appointment_id=by_id[d.request_id].reschedules,
                                         request_id=d.request_id, reason=d.reason))
    for reason, ids in rejected.items():
        await writes.execute("reject_booking_requests", {"ids": tuple(ids), "reason": reason, "now": now})
    await history.record(writes, changes)
    # The batch's events, in the same transaction; the worker asks for their delivery after commit.
    # A slot hold is no appointment yet: its confirmation is the event.
    await record_events(writes, [decision_event(d, by_id[d.request_id], now, moving or {})
                                 for d in decisions if by_id[d.request_id].kind != "hold"], now=now)
    await writes.send()


async def requested_rows(tx: Connection, requests: list[PendingRequest], now: datetime) -> list[Row]:
    """The `requested` history rows of requests being decided (core/history.py): by the patient, or by staff for
    them (whose role is read only then). Never after `now`, the decision's time, whatever the clocks of the API and
    the worker say; none for a request that has its row already (stored before migration 0014)."""
    requests = [r for r in requests if not r.requested_in_history]
    roles = {}
    if staff_ids := tuple({r.requested_by for r in requests if r.requested_by is not None}):
        roles = {row["id"]: row["role"] for row in await tx.fetch_all("find_people", {"ids": staff_ids})}
    return [history.requested(r.id, min(r.created_at or now, now), r.requested_by or r.patient_id,
                              roles.get(r.requested_by, "Staff") if r.requested_by else "Patient", r.reschedules)
            for r in requests]


def decision_event(d: Decision, r: PendingRequest, now: datetime, moving: dict[int, Moving]) -> Event:
    """appointment.confirmed with the new appointment (appointment.rescheduled, with the old one, for a move), or
    booking.rejected with the request and the reason."""
    doctor_id = r.doctor_id
    if d.status == "confirmed":
        made = {"id": d.appointment_id, "doctor_id": doctor_id, "patient_id": r.patient_id, "booking_request_id": r.id,
                "appointment_type_id": r.appointment_type_id, "start_time": r.start_time, "end_time": r.end_time}
        if d.rescheduled_from is None:
            return appointment_event(CONFIRMED, made)
        old = moving[d.rescheduled_from]
        previous = {"id": old.id, "doctor_id": old.doctor_id, "patient_id": old.patient_id,
                    "start_time": old.start_time, "end_time": old.end_time, "status": "rescheduled"}
        return appointment_event(RESCHEDULED, made, sequence_at(now), previous, rescheduled_from=old.id)
    return Event(REJECTED, doctor_id, r.patient_id, None, {"booking_request": {
        "id": r.id, "doctor_id": doctor_id, "patient_id": r.patient_id, "appointment_type_id": r.appointment_type_id,
        "start_time": rfc3339(r.start_time), "end_time": rfc3339(r.end_time), "status": d.status,
        "reason": d.reason}})


async def decide_for_doctor(db: Database, doctor_id: int, batch_size: int, attempts: int = 3,
                            policy: HoldPolicy | None = None) -> Decided:
    """One doctor's pending requests (up to `batch_size`), decided in a transaction of their own."""
    return (await decide_for_doctors(db, [doctor_id], batch_size, attempts, policy))[0]


async def decide_for_doctors(db: Database, doctor_ids: Iterable[int], batch_size: int, attempts: int = 3,
                             policy: HoldPolicy | None = None) -> list[Decided]:
    """Run the decision of these doctors' pending requests in one transaction; a deadlock or lock-wait timeout rolls
    back and runs it again (up to `attempts` times), as does a batch that must take lower doctors' locks first
    (LockOrder: the set only grows)."""
    doctor_ids = sorted(set(doctor_ids))
    locked_first: frozenset[int] = frozenset()
    failures = 0
    while True:
        try:
            async with db.transaction() as tx:
                return await decide_pending_requests(tx, doctor_ids, batch_size, locked_first, policy)
        except LockOrder as lock_order:
            locked_first = frozenset(lock_order.doctor_ids)
        except Exception as exc:
            failures += 1
            if mysql_error_code(exc) not in RETRYABLE_ERRORS or failures == attempts:
                raise
            log.info("booking transaction for doctor(s) %s hit MySQL error %s; retrying", doctor_ids,
                     mysql_error_code(exc))
            await asyncio.sleep(0.005 * 2**failures)


async def fail_request(db: Database, request_id: int) -> Decided | None:
    """The last try of a request's job gave up: mark the request failed, with its history row. None if another
    job decided it meanwhile (that decision stands)."""
    now = utcnow()
    async with db.transaction() as tx:
        request = await tx.fetch_one("lock_booking_request", {"id": request_id})
        if request is None or request["status"] != "pending":
            return None
        await tx.execute("mark_booking_request_failed", {"id": request_id, "reason": RETRIES_EXHAUSTED, "now": now})
        pending = PendingRequest(request_id, request["patient_id"], now, now, None, reschedules=request["reschedules"],
                                 requested_by=request["requested_by"], created_at=request["created_at"],
                                 requested_in_history=bool(request["requested_in_history"]),
                                 doctor_id=request["doctor_id"])
        await history.record(tx, [*await requested_rows(tx, [pending], now), history.entry(
            "failed", now, appointment_id=request["reschedules"], request_id=request_id, reason=RETRIES_EXHAUSTED)])
    return Decided(request["doctor_id"], now, [Decision(request_id, "failed", RETRIES_EXHAUSTED)])
