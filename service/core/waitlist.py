"""The waitlist: patients waiting for time with a doctor, offered freed time first come, first served.

Whenever time in a doctor's schedule frees or appears (a cancellation, a move away, time off withdrawn, new hours
or windows, a hold released or expired), the worker runs `refill` for that doctor (queued after the change's
commit, and by the periodic sweep for every doctor with someone waiting, so a worker lost in between delays an
offer but never drops it). Under the doctor's row lock, in one transaction, it takes the waiting entries oldest
first and, for each, the first free slot of its length in its range, asked of the same DoctorTime (`slots`, hence
`why_not`) that slot reads and decisions use: it holds that slot for the patient (status `offered`), or with
`auto_book` books it. A hold blocks its slot like an appointment, so one slot is offered to one entry at a time,
and an entry has at most one live offer. An offer let lapse or declined puts its entry at the end of the line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from service.core import faults, history, outbox
from service.core.accounts import CurrentUser
from service.core.availability import DoctorTime, Rules, Taken
from service.core.booking import PATIENT_ROWS, buffers_of, range_reads, schedule_reads
from service.core.db import Connection, Database, Row
from service.core.doctors import find_doctor, lock_doctor
from service.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from service.core.schedule import MAX_RANGE, bookable_type, doctor_time_from_rows, rules_of
from service.core.staff import sees_every_appointment
from service.core.times import to_db, utcnow
from service.core.zones import zone_named

log = logging.getLogger("service.waitlist")

DEFAULT_DURATION = 30
MAX_OPEN_ENTRIES = 20  # waiting or offered, per patient
REFILL_BATCH = 200  # entries looked at in one refill, oldest first
SLOTS_PER_LOOK = 20  # slots read at a time while looking for one the patient is free for


async def add(tx: Connection, user: CurrentUser, doctor_id: int, not_before: datetime, not_after: datetime,
              type_id: int | None, duration_minutes: int | None, auto_book: bool) -> Row:
    """Put the patient on a doctor's waitlist: an appointment inside [not_before, not_after] of the type's length
    (or `duration_minutes`, 30 by default), offered or (`auto_book`) booked when time frees."""
    if user.role != "Patient":
        raise Forbidden("only a patient joins a waitlist")
    start, end = to_db(not_before, "not_before"), to_db(not_after, "not_after")
    now = utcnow()
    if end <= start:
        raise InvalidInput("must be after not_before", field="not_after")
    if end <= now:
        raise InvalidInput("must be in the future", field="not_after")
    if end - max(start, now) > MAX_RANGE:
        raise InvalidInput("the range is at most 62 days from now or not_before", field="not_after")
    await find_doctor(tx, doctor_id)
    if type_id is not None:
        if duration_minutes is not None:
            raise InvalidInput("give either duration_minutes or appointment_type_id, not both",
                               field="duration_minutes")
        duration_minutes = (await bookable_type(tx, doctor_id, type_id))["duration_minutes"]  # type: ignore[arg-type]
    duration_minutes = duration_minutes or DEFAULT_DURATION
    if timedelta(minutes=duration_minutes) > end - max(start, now):
        raise InvalidInput("the range is shorter than the appointment", field="not_after")
    await lock_doctor(tx, doctor_id)
    if await tx.fetch_value("count_open_waitlist_entries_of_patient", {"patient_id": user.id}) >= MAX_OPEN_ENTRIES:
        raise Conflict(f"you are on at most {MAX_OPEN_ENTRIES} waitlists at once", reason="too_many_entries")
    _, entry_id = await tx.execute("insert_waitlist_entry", {
        "patient_id": user.id, "doctor_id": doctor_id, "appointment_type_id": type_id,
        "duration_minutes": duration_minutes, "not_before": start, "not_after": end, "auto_book": auto_book,
        "now": now})
    return await find_entry(tx, entry_id, user)


async def find_entry(db: Database | Connection, entry_id: int, user: CurrentUser) -> Row:
    """The entry if the caller is its patient, its doctor, or staff; 404 otherwise."""
    row = await db.fetch_one("find_waitlist_entry", {"id": entry_id, "user_id": user.id,
                                                     "any": sees_every_appointment(user)})
    if row is None:
        raise NotFound(f"no waitlist entry {entry_id} of yours")
    return row


async def list_entries(db: Database, user: CurrentUser, doctor_id: int | None, status: str | None, limit: int,
                       offset: int) -> tuple[list[Row], int]:
    """A patient's own entries (newest first); a doctor's own line, or (staff) any doctor's (`doctor_id`), in its
    order."""
    own_line = user.role == "Doctor" and doctor_id == user.id
    if doctor_id is not None and not sees_every_appointment(user) and not own_line:
        raise Forbidden("only staff read another doctor's waitlist")
    if user.role == "Patient":
        params = {"patient_id": user.id, "doctor_id": None}
    elif doctor_id is not None or user.role == "Doctor":
        params = {"patient_id": None, "doctor_id": doctor_id or user.id}
    else:
        raise InvalidInput("say whose waitlist: doctor_id", field="doctor_id")
    params["status"] = status
    async with db.connection() as conn:
        rows = await conn.fetch_all("list_waitlist_entries", {**params, "limit": limit, "offset": offset})
        total = await conn.fetch_value("count_waitlist_entries", params)
    return rows, total


async def cancel(tx: Connection, entry_id: int, user: CurrentUser) -> tuple[Row, bool]:
    """Leave the waitlist (its patient), under the doctor's lock: a live offer is released with it. The entry as it
    now stands, and whether this call ended it (False: it had ended already)."""
    entry = await find_entry(tx, entry_id, user)
    if entry["patient_id"] != user.id:
        raise Forbidden("only its patient leaves a waitlist")
    await lock_doctor(tx, entry["doctor_id"])
    entry = await find_entry(tx, entry_id, user)
    if entry["status"] not in ("waiting", "offered"):
        return entry, False
    now = utcnow()
    await tx.execute("cancel_waitlist_entry", {"id": entry_id, "now": now})
    if entry["hold_id"] is not None:
        await tx.execute("release_hold_of_entry", {"hold_id": entry["hold_id"], "now": now})
    return await find_entry(tx, entry_id, user), True


async def requeue(tx: Connection, holds: list[Row], now: datetime) -> None:
    """Offers (holds) that lapsed or were declined: their entries go back to the end of the line."""
    if hold_ids := tuple(h["id"] for h in holds if h["waitlist_entry_id"] is not None):
        await tx.execute("requeue_waitlist_entries", {"hold_ids": hold_ids, "now": now})


async def offered(tx: Connection, entry: Row, hold: Row, now: datetime) -> None:
    """THE notification of an offer: a `waitlist.offered` event in the refill's transaction (the patient's email,
    webhooks), delivered by the worker after the commit."""
    log.info("waitlist entry %s of patient %s offered hold %s (%s-%s), until %s", entry["id"], entry["patient_id"],
             hold["id"], hold["start_time"].isoformat(), hold["end_time"].isoformat(), hold["expires_at"].isoformat())
    held = {"id": hold["id"], "doctor_id": hold["doctor_id"], "patient_id": hold["patient_id"],
            "appointment_type_id": hold["appointment_type_id"], "start_time": outbox.rfc3339(hold["start_time"]),
            "end_time": outbox.rfc3339(hold["end_time"]), "expires_at": outbox.rfc3339(hold["expires_at"])}
    await outbox.record_events(tx, [outbox.Event(outbox.WAITLIST_OFFERED, hold["doctor_id"], hold["patient_id"],
                                                 None, {"hold": held, "waitlist_entry_id": entry["id"]})], now=now)


@dataclass(slots=True)
class Refilled:
    """What one refill did: holds expired, offers made (hold ids), appointments booked (ids)."""

    doctor_id: int
    expired: int = 0
    offers: list[int] = field(default_factory=list)
    booked: list[int] = field(default_factory=list)

    @property
    def changed_schedule(self) -> bool:
        return bool(self.expired or self.offers or self.booked)


def first_fit(doctor: DoctorTime, patient: Taken, length: timedelta, earliest: datetime, latest: datetime,
              now: datetime, rules: Rules, skip_start: datetime | None) -> tuple[datetime, datetime] | None:
    """The first slot in [earliest, latest) the doctor can give (`slots`, so `why_not`) and the patient is free
    for, other than the one they let go (`skip_start`). Pure: no I/O."""
    while earliest < latest:
        found, next_start = doctor.slots(length, earliest, latest, now, SLOTS_PER_LOOK, rules)
        for start, end, _ in found:
            if start != skip_start and patient.clash(start, end) is None:
                return start, end
        if next_start is None:
            return None
        earliest = next_start
    return None


@dataclass(slots=True)
class Fit:
    """A waiting entry and the slot it gets."""

    entry: Row
    appointment_type: Row | None
    slot: tuple[datetime, datetime]


async def refill(db: Database, doctor_id: int, hold_seconds: int, holds_per_patient: int) -> Refilled:
    """Expire this doctor's lapsed holds (their entries back in line) and entries past their range, then offer
    free time to the waiting entries, oldest first: one transaction, under the doctor's row lock, then the
    patients' (ascending, as a booking batch takes them). Safe to run any number of times.

    With nothing to expire, whether anything fits is first worked out without a lock: a refill that finds
    nothing to offer (what most of the sweep's are) never holds up the doctor's bookings. Reading without the lock
    misses nothing for long: a change committed after that read queues a refill of its own.
    """
    done = Refilled(doctor_id)
    now = utcnow()
    work = await db.fetch_one("waitlist_work_of_doctor", {"doctor_id": doctor_id, "now": now})
    if work is None or not (work["waiting"] or work["lapsed"]):
        return done
    if not work["lapsed"] and not work["ended"]:
        async with db.connection() as conn:
            if not await fits_for(conn, doctor_id, work["timezone"], now, holds_per_patient):
                return done
    async with db.transaction() as tx:
        doctor = await tx.fetch_one("lock_doctor_zone", {"doctor_id": doctor_id})
        if doctor is None:
            return done
        now = utcnow()
        if lapsed := await tx.fetch_all("lapsed_holds_of_doctor", {"doctor_id": doctor_id, "now": now,
                                                                   "limit": REFILL_BATCH}):
            await tx.execute("expire_holds", {"ids": tuple(h["id"] for h in lapsed), "now": now})
            await requeue(tx, lapsed, now)
            done.expired = len(lapsed)
        await tx.execute("expire_waitlist_entries_of_doctor", {"doctor_id": doctor_id, "now": now})
        for fit in await fits_for(tx, doctor_id, doctor["timezone"], now, holds_per_patient, lock=True):
            if fit.entry["auto_book"]:
                done.booked.append(await book(tx, doctor_id, fit.entry, fit.appointment_type, fit.slot, now))
            else:
                done.offers.append(await offer(tx, doctor_id, fit.entry, fit.appointment_type, fit.slot, now,
                                               hold_seconds))
        if faults.armed and (done.offers or done.booked):
            faults.hit("refill_before_commit")  # time freed, nothing offered yet: the sweep must find it
    return done


async def fits_for(conn: Connection, doctor_id: int, timezone: str, now: datetime, holds_per_patient: int, *,
                   lock: bool = False) -> list[Fit]:
    """The waiting entries, oldest first, that get a slot, and theirs: each the first slot in its range that the
    doctor can give (DoctorTime, as every read and decision asks) and its patient is free for, taking it before the
    next entry looks. With `lock`, the patients' rows are locked first (the caller holds the doctor's)."""
    entries = await conn.fetch_all("waiting_entries_of_doctor", {"doctor_id": doctor_id, "limit": REFILL_BATCH})
    if not entries:
        return []
    patient_ids = tuple(sorted({e["patient_id"] for e in entries}))
    if lock:
        await conn.fetch_all("lock_users", {"ids": patient_ids})
    live = {row["patient_id"]: row["live"] for row in await conn.fetch_all(
        "count_live_holds_of_patients", {"ids": patient_ids, "now": now})}
    types = {t["id"]: t for t in await conn.fetch_all("list_active_appointment_types", {"doctor_id": doctor_id})}
    wanted = []
    for entry in entries:
        appointment_type = types.get(entry["appointment_type_id"])
        if entry["appointment_type_id"] is not None and appointment_type is None:
            continue  # its type is no longer offered: it waits (and expires with its range)
        length = timedelta(minutes=appointment_type["duration_minutes"] if appointment_type
                           else entry["duration_minutes"])
        earliest, latest = max(entry["not_before"], now), entry["not_after"]
        if latest - earliest >= length:
            wanted.append((entry, appointment_type, length, earliest, latest))
    if not wanted:
        return []
    doctor_time, patients = await read_schedule(
        conn, doctor_id, zone_named(timezone), patient_ids,
        [(earliest, latest, entry["patient_id"]) for entry, *_, earliest, latest in wanted], now)
    fits = []
    for entry, appointment_type, length, earliest, latest in wanted:
        patient = entry["patient_id"]
        if not entry["auto_book"] and live.get(patient, 0) >= holds_per_patient:
            continue
        rules = rules_of(appointment_type)
        slot = first_fit(doctor_time, patients[patient], length, earliest, latest, now, rules,
                         entry["last_offered_start"])
        if slot is None:
            continue  # nothing fits its range (and length, type) now: skipped, not offered
        doctor_time.take(*slot, rules)  # as a batch's decision does: the next entries see it taken
        patients[patient].take(*slot)
        if not entry["auto_book"]:
            live[patient] = live.get(patient, 0) + 1
        fits.append(Fit(entry, appointment_type, slot))
    return fits


async def read_schedule(tx: Connection, doctor_id: int, zone: ZoneInfo, patient_ids: tuple[int, ...],
                        asking: list[tuple[datetime, datetime, int]], now: datetime,
                        ) -> tuple[DoctorTime, dict[int, Taken]]:
    """The doctor's time over the entries' ranges (one a cluster of nearby ones), and each entry's patient's time
    in its own, read under the locks in one round trip (as a booking batch reads)."""
    reads = range_reads(doctor_id, asking)
    schedule_rows: list[Row] = []
    taken: dict[int, list[tuple[datetime, datetime]]] = {p: [] for p in patient_ids}
    for row in (row for rows in await tx.fetch_batch(schedule_reads(reads, now)) for row in rows):
        if row["kind"] in PATIENT_ROWS:
            taken[row["patient_id"]].append((row["start_time"], row["end_time"]))
        else:
            schedule_rows.append(row)
    return (doctor_time_from_rows(schedule_rows, zone, [(start, end) for _, start, end, _ in reads]),
            {patient: Taken(spans) for patient, spans in taken.items()})


async def offer(tx: Connection, doctor_id: int, entry: Row, appointment_type: Row | None,
                slot: tuple[datetime, datetime], now: datetime, hold_seconds: int) -> int:
    """Hold the slot for the entry's patient and tell them (`offered`)."""
    hold = {"doctor_id": doctor_id, "patient_id": entry["patient_id"],
            "appointment_type_id": entry["appointment_type_id"], "start_time": slot[0], "end_time": slot[1],
            "notes": None, "expires_at": now + timedelta(seconds=hold_seconds), "booking_request_id": None,
            "waitlist_entry_id": entry["id"], "now": now, **buffers_of(appointment_type)}
    _, hold_id = await tx.execute("insert_hold", hold)
    await tx.execute("mark_waitlist_entry_offered", {"id": entry["id"], "hold_id": hold_id})
    await offered(tx, entry, {**hold, "id": hold_id}, now)
    return hold_id


async def book(tx: Connection, doctor_id: int, entry: Row, appointment_type: Row | None,
               slot: tuple[datetime, datetime], now: datetime) -> int:
    """Book the slot for the entry's patient (auto_book): a decided booking request, its appointment, history."""
    request = {"patient_id": entry["patient_id"], "doctor_id": doctor_id,
               "appointment_type_id": entry["appointment_type_id"], "start_time": slot[0], "end_time": slot[1],
               "now": now}
    _, request_id = await tx.execute("insert_decided_booking_request", request)
    _, appointment_id = await tx.execute("insert_appointment", {
        **request, "booking_request_id": request_id, "rescheduled_from": None, "notes": None,
        **buffers_of(appointment_type)})
    await tx.execute("link_booking_request_appointment", {"id": request_id, "appointment_id": appointment_id})
    await tx.execute("mark_waitlist_entry_auto_booked", {"id": entry["id"], "appointment_id": appointment_id,
                                                         "now": now})
    await history.record(tx, [history.entry("confirmed", now, appointment_id=appointment_id, request_id=request_id,
                                            to_status="confirmed", reason="waitlist")])
    await outbox.record_events(tx, [outbox.appointment_event(outbox.CONFIRMED, {
        "id": appointment_id, "booking_request_id": request_id, **request})], now=now)
    return appointment_id


async def doctors_with_work(db: Database, limit: int) -> list[int]:
    """For the sweep: doctors whose waitlist or lapsed holds a refill should look at."""
    return [row["doctor_id"] for row in await db.fetch_all("doctors_with_waitlist_work",
                                                           {"now": utcnow(), "limit": limit})]
