"""The booking decision: run by the worker, under the doctor's row lock, in one transaction.

`decide` is pure (data in, decisions out); `decide_pending_requests` is the I/O around it, and `decide_for_doctor`
the transaction and its retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.core import faults
from service.core.availability import DoctorTime, Taken
from service.core.db import RETRYABLE_ERRORS, Connection, Database, mysql_error_code
from service.core.queue import Decided, Decision
from service.core.times import utcnow

log = logging.getLogger("service.booking")

# Machine-readable reasons a request is rejected or failed, beyond availability's (IN_PAST, ...).
PATIENT_BUSY = "patient_busy"
DOCTOR_NOT_FOUND = "doctor_not_found"
RETRIES_EXHAUSTED = "retries_exhausted"
# Requests of a batch whose times lie closer than this are read from MySQL in one range; farther ones in another,
# so a batch never reads a doctor's whole calendar between two far-apart requests.
NEARBY = timedelta(days=1)


@dataclass(slots=True)
class PendingRequest:
    id: int
    patient_id: int
    start_time: datetime
    end_time: datetime
    notes: str | None


def decide(
    requests: list[PendingRequest], doctor: DoctorTime, patients: dict[int, Taken], now: datetime
) -> list[Decision]:
    """Decide requests in order, each seeing the ones confirmed before it. Pure: no I/O."""
    decisions = []
    for request in requests:
        start, end = request.start_time, request.end_time
        patient = patients.setdefault(request.patient_id, Taken())
        reason = doctor.why_not(start, end, now)
        if reason is None and patient.clash(start, end) is not None:
            reason = PATIENT_BUSY
        if reason is None:
            doctor.taken.take(start, end)
            patient.take(start, end)
            decisions.append(Decision(request.id, "confirmed"))
        else:
            decisions.append(Decision(request.id, "rejected", reason))
    return decisions


def ranges_to_read(requests: list[PendingRequest]) -> list[tuple[datetime, datetime]]:
    """The time ranges a batch's decision must read: one per cluster of nearby requests."""
    ranges: list[tuple[datetime, datetime]] = []
    for request in sorted(requests, key=lambda r: r.start_time):
        if ranges and request.start_time <= ranges[-1][1] + NEARBY:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], request.end_time))
        else:
            ranges.append((request.start_time, request.end_time))
    return ranges


async def decide_pending_requests(tx: Connection, doctor_id: int, batch_size: int) -> Decided:
    """Decide up to `batch_size` pending requests of one doctor inside the caller's transaction.

    The doctor's row lock serializes every writer of this doctor's schedule; the patients' row locks
    serialize bookings of one patient with different doctors. Reads come after the locks, and the session
    runs READ COMMITTED, so they see everything committed before.
    """
    params = {"doctor_id": doctor_id, "limit": batch_size}
    rows = await tx.fetch_all("lock_doctor_and_pending_requests", params)
    doctor_exists = bool(rows)
    if not doctor_exists:
        rows = await tx.fetch_all("lock_pending_requests_of_doctor", params)
    now = utcnow()
    requests = [PendingRequest(r["id"], r["patient_id"], r["start_time"], r["end_time"], r["notes"])
                for r in rows if r["id"] is not None]
    if not requests:
        return Decided(doctor_id, now, [])
    if not doctor_exists:
        decisions = [Decision(r.id, "rejected", DOCTOR_NOT_FOUND) for r in requests]
    else:
        patient_ids = tuple(sorted({r.patient_id for r in requests}))
        await tx.fetch_all("lock_patients", {"patient_ids": patient_ids})
        windows, doctor_taken = [], []
        patient_taken: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        for start, end in ranges_to_read(requests):
            for row in await tx.fetch_all("list_schedule_between", {
                    "doctor_id": doctor_id, "patient_ids": patient_ids, "from": start, "to": end}):
                span = (row["start_time"], row["end_time"])
                if row["kind"] == "window":
                    windows.append((*span, row["id"]))
                elif row["kind"] == "doctor":
                    doctor_taken.append(span)
                else:
                    patient_taken[row["patient_id"]].append(span)
        doctor = DoctorTime(set(windows), doctor_taken)
        decisions = decide(requests, doctor, {p: Taken(spans) for p, spans in patient_taken.items()}, now)
    await record_decisions(tx, doctor_id, requests, decisions, now)
    if faults.armed:
        faults.hit("before_commit")
    return Decided(doctor_id, now, decisions)


async def record_decisions(
    tx: Connection, doctor_id: int, requests: list[PendingRequest], decisions: list[Decision], now: datetime
) -> None:
    by_id = {r.id: r for r in requests}
    confirmed = [by_id[d.request_id] for d in decisions if d.status == "confirmed"]
    if confirmed:
        appointments = [{"booking_request_id": r.id, "doctor_id": doctor_id, "patient_id": r.patient_id,
                         "start_time": r.start_time, "end_time": r.end_time, "notes": r.notes, "now": now}
                        for r in confirmed]
        confirmed_ids = tuple(r.id for r in confirmed)
        if len(appointments) == 1:  # the usual batch: the insert itself says the new id
            _, appointment_id = await tx.execute("insert_appointment", appointments[0])
            appointment_ids = {confirmed_ids[0]: appointment_id}
        else:  # a multi-row insert's ids need not be consecutive (MySQL 8's interleaved auto-increment)
            await tx.execute_many("insert_appointment", appointments)
            appointment_ids = {row["booking_request_id"]: row["id"] for row in
                               await tx.fetch_all("appointments_of_requests", {"ids": confirmed_ids})}
        await tx.execute("confirm_booking_requests", {"ids": confirmed_ids, "now": now})
        for d in decisions:
            if d.status == "confirmed":
                d.appointment_id = appointment_ids[d.request_id]
    rejected: dict[str, list[int]] = defaultdict(list)
    for d in decisions:
        if d.status == "rejected":
            rejected[d.reason or ""].append(d.request_id)
    for reason, ids in rejected.items():
        await tx.execute("reject_booking_requests", {"ids": tuple(ids), "reason": reason, "now": now})


async def decide_for_doctor(db: Database, doctor_id: int, batch_size: int, attempts: int = 3) -> Decided:
    """Run the decision in one transaction; a deadlock or lock-wait timeout rolls back and runs it again."""
    for attempt in range(1, attempts + 1):
        try:
            async with db.transaction() as tx:
                return await decide_pending_requests(tx, doctor_id, batch_size)
        except Exception as exc:
            if mysql_error_code(exc) not in RETRYABLE_ERRORS or attempt == attempts:
                raise
            log.info("booking transaction for doctor %s hit MySQL error %s; retrying", doctor_id,
                     mysql_error_code(exc))
            await asyncio.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")
