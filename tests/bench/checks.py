"""What every scenario is checked for, from the database, once its load has stopped.

A double booking is two appointments holding time (any status but cancelled or rescheduled) of one doctor whose
blocked spans `[start - buffer_before, end + buffer_after)` overlap, or of one patient whose times overlap, or (once
slot holds exist) a live hold overlapping such an appointment of its doctor; a request left pending was answered 202
and never decided. Either fails the run. Fairness (the rush) is measured here too: a figure, not a failure.
"""

from __future__ import annotations

import time
from typing import Any

from service.core.settings import Settings
from tests.bench.seed import connect

# Statuses that free an appointment's time; every other one (confirmed, and later checked_in, completed, no_show)
# holds it.
HOLDS_TIME = "{0}.status NOT IN ('cancelled', 'rescheduled')"
DOCTOR_OVERLAPS = f"""
    SELECT a.id, b.id FROM appointments a JOIN appointments b ON b.doctor_id = a.doctor_id AND a.id < b.id
    WHERE {HOLDS_TIME.format("a")} AND {HOLDS_TIME.format("b")}
      AND a.start_time - INTERVAL a.buffer_before_minutes MINUTE < b.end_time + INTERVAL b.buffer_after_minutes MINUTE
      AND b.start_time - INTERVAL b.buffer_before_minutes MINUTE < a.end_time + INTERVAL a.buffer_after_minutes MINUTE
    LIMIT 20"""
PATIENT_OVERLAPS = f"""
    SELECT a.id, b.id FROM appointments a JOIN appointments b ON b.patient_id = a.patient_id AND a.id < b.id
    WHERE {HOLDS_TIME.format("a")} AND {HOLDS_TIME.format("b")}
      AND a.start_time < b.end_time AND b.start_time < a.end_time
    LIMIT 20"""
# Live slot holds (where the service has them) block their span, buffers included, exactly like an appointment.
HOLD_OVERLAPS = f"""
    SELECT h.id, a.id FROM holds h JOIN appointments a ON a.doctor_id = h.doctor_id
    WHERE h.status = 'held' AND h.expires_at > UTC_TIMESTAMP(6) AND {HOLDS_TIME.format("a")}
      AND h.start_time - INTERVAL h.buffer_before_minutes MINUTE < a.end_time + INTERVAL a.buffer_after_minutes MINUTE
      AND a.start_time - INTERVAL a.buffer_before_minutes MINUTE < h.end_time + INTERVAL h.buffer_after_minutes MINUTE
    LIMIT 20"""
# Per slot asked for (a rush asks only for whole slots: one doctor, one start): the earliest stored request that
# was not turned down for a reason of its own (its patient was busy), and the one that got the slot.
FAIRNESS = """
    SELECT doctor_id, start_time, COUNT(*) AS asked,
           MIN(CASE WHEN status = 'confirmed' THEN id END) AS winner,
           MIN(CASE WHEN NOT (status = 'rejected' AND reason = 'patient_busy') THEN id END) AS first_eligible
    FROM booking_requests GROUP BY doctor_id, start_time"""


class CorrectnessViolation(AssertionError):
    """The database shows a double booking or an undecided request after a scenario."""


def pending_count(settings: Settings) -> int:
    conn = connect(settings)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM booking_requests WHERE status = 'pending'")
            return cursor.fetchone()[0]
    finally:
        conn.close()


def wait_until_decided(settings: Settings, timeout: float = 30) -> int:
    """Requests still pending once they had `timeout` seconds to be decided (the sweep runs every few seconds)."""
    deadline = time.monotonic() + timeout
    while (pending := pending_count(settings)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return pending


def database_state(settings: Settings) -> dict[str, Any]:
    """Double bookings (pairs of appointment ids, a few), requests by status, and the stored→decided times."""
    conn = connect(settings)
    try:
        with conn.cursor() as cursor:
            cursor.execute(DOCTOR_OVERLAPS)
            doctor_pairs = [list(pair) for pair in cursor.fetchall()]
            cursor.execute(PATIENT_OVERLAPS)
            patient_pairs = [list(pair) for pair in cursor.fetchall()]
            hold_pairs: list[list[int]] = []
            if cursor.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE()"
                              " AND table_name = 'holds'"):
                cursor.execute(HOLD_OVERLAPS)
                hold_pairs = [list(pair) for pair in cursor.fetchall()]
            cursor.execute("SELECT status, COUNT(*) FROM booking_requests GROUP BY status")
            by_status = {status: count for status, count in cursor.fetchall()}
            cursor.execute(f"SELECT COUNT(*) FROM appointments a WHERE {HOLDS_TIME.format('a')}")
            confirmed = cursor.fetchone()[0]
    finally:
        conn.close()
    return {"double_bookings": len(doctor_pairs) + len(patient_pairs) + len(hold_pairs),
            "double_booking_pairs": {"doctor": doctor_pairs, "patient": patient_pairs, "hold": hold_pairs},
            "requests_by_status": by_status, "pending": by_status.get("pending", 0),
            "confirmed_appointments": confirmed}


def violations_of(state: dict[str, Any]) -> list[str]:
    found = []
    if state["double_bookings"]:
        found.append(f"DOUBLE BOOKINGS: {state['double_booking_pairs']}")
    if state["pending"]:
        found.append(f"{state['pending']} booking request(s) left pending")
    return found


def fairness(settings: Settings) -> dict[str, int]:
    """Slots asked for more than once, and those whose winner was not the earliest eligible request: a later
    request won, or the slot went to no one although a request for it was turned down for the slot's sake."""
    conn = connect(settings)
    try:
        with conn.cursor() as cursor:
            cursor.execute(FAIRNESS)
            rows = cursor.fetchall()
    finally:
        conn.close()
    contested = [r for r in rows if r[2] > 1]
    unfair = [r for r in contested if r[4] is not None and r[3] != r[4]]
    return {"contested_slots": len(contested), "fairness_violations": len(unfair),
            "unfair_examples": [[str(r[0]), str(r[1]), r[3], r[4]] for r in unfair[:5]]}
