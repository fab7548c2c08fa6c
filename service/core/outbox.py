"""The transactional outbox: appointment events written in the transaction of their change, fanned out into
deliveries (one per event, channel and recipient), each delivered until it succeeds or is given up visibly.

Writers call `record_events(tx, events)` inside their transaction: the event exists if and only if the change
committed. The worker then fans it out (`fan_out`) and delivers the new deliveries in batches (`claim`, `delivered`,
`failed_attempt`). A sweep fans out and re-queues whatever a lost Redis or a killed worker left behind,
so a delivery can be late, never lost.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec
from redis.asyncio import Redis

from service.core import times
from service.core.db import Database, Row, Writer
from service.core.queue import enqueue_dispatch
from service.core.times import utcnow

# Appointment statuses in which it is still going to happen: reminders are sent and feeds show it as confirmed only
# for these. The one place to add statuses such as checked_in.
ACTIVE_STATUSES: tuple[str, ...] = ("confirmed",)

CONFIRMED = "appointment.confirmed"
CANCELLED = "appointment.cancelled"
RESCHEDULED = "appointment.rescheduled"
STATUS_CHANGED = "appointment.status_changed"
REJECTED = "booking.rejected"
WAITLIST_OFFERED = "waitlist.offered"  # freed time held for a waiting patient (service/core/waitlist.py)
REMINDER = "appointment.reminder"  # internal: an email to the patient, never a webhook
WEBHOOK_EVENTS = (CONFIRMED, CANCELLED, RESCHEDULED, STATUS_CHANGED, REJECTED, WAITLIST_OFFERED)
# Which events are emailed, and to whom.
EMAILED: dict[str, tuple[str, ...]] = {
    CONFIRMED: ("patient", "doctor"), CANCELLED: ("patient", "doctor"), RESCHEDULED: ("patient", "doctor"),
    REMINDER: ("patient",), WAITLIST_OFFERED: ("patient",),
}

# A worker delivering a delivery holds it this long (longer than any delivery takes: SMTP's and webhooks' timeouts
# are shorter); if it dies, the claim lapses and the sweep takes the delivery up again.
CLAIM_SECONDS = 60
FAN_OUT_BATCH = 500
SWEEP_BATCH = 1000
# An iCalendar SEQUENCE for a change: the seconds since this instant, so every later change counts higher without a
# counter to keep (the invite of a confirmation is SEQUENCE 0).
SEQUENCE_EPOCH = datetime(2024, 1, 1)

_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Event:
    """What happened to an appointment (or a booking request), with its data as of the change (JSON-able)."""

    type: str
    doctor_id: int
    patient_id: int
    appointment_id: int | None
    data: dict[str, Any] = field(default_factory=dict)


def rfc3339(value: datetime | None) -> str | None:
    """A naive UTC time as RFC 3339 with Z (times.rfc3339), or None."""
    return None if value is None else times.rfc3339(value)


def sequence_at(when: datetime) -> int:
    """The iCalendar SEQUENCE of a change made at `when` (naive UTC): higher for every later change."""
    return max(1, int((when - SEQUENCE_EPOCH).total_seconds()))


def appointment_data(row: Row, **extra: Any) -> dict[str, Any]:
    """An appointment as events carry it: ids, times in RFC 3339, status, and why it was cancelled."""
    data = {
        "id": row["id"], "doctor_id": row["doctor_id"], "patient_id": row["patient_id"],
        "appointment_type_id": row.get("appointment_type_id"), "booking_request_id": row.get("booking_request_id"),
        "start_time": rfc3339(row["start_time"]), "end_time": rfc3339(row["end_time"]),
        "status": row.get("status", "confirmed"), "cancel_reason": row.get("cancel_reason"),
    }
    return {**data, **extra}


def appointment_event(type_: str, row: Row, sequence: int = 0, previous: Row | None = None, **extra: Any) -> Event:
    """An event about an appointment row (as `appointment_data` carries it, plus `extra`); `sequence` numbers its
    invite (`sequence_at(now)` for any change after the confirmation). A reschedule passes the appointment as it
    was in `previous` (its email names the old time) and `rescheduled_from=`/`rescheduled_to=` ids in `extra`."""
    data: dict[str, Any] = {"appointment": appointment_data(row, **extra), "sequence": sequence}
    if previous is not None:
        data["previous"] = appointment_data(previous, rescheduled_to=row["id"])
    return Event(type_, row["doctor_id"], row["patient_id"], row["id"], data)


async def record_events(tx: Writer, events: list[Event], redis: Redis | None = None,
                        now: datetime | None = None) -> None:
    """Write `events` to the outbox inside the caller's transaction, in one statement. With `redis`, the worker is
    asked to deliver them once the transaction commits (without it, the caller asks, or the sweep finds them)."""
    if not events:
        return
    now = now or utcnow()
    await tx.execute_many("insert_outbox_events", [
        {"public_id": "evt_" + uuid.uuid4().hex, "type": e.type, "appointment_id": e.appointment_id,
         "doctor_id": e.doctor_id, "patient_id": e.patient_id, "payload": _encoder.encode(e.data).decode(),
         "now": now} for e in events])
    if redis is not None:
        tx.after_commit(partial(enqueue_dispatch, redis))


# --- fan-out: events → deliveries ----------------------------------------------------------------------------

def subscribed(webhook: Row, event: Row) -> bool:
    """Whether the webhook wants this event: its type is listed (or "*"), and it sees the appointment's doctor."""
    if event["type"] not in WEBHOOK_EVENTS:
        return False
    wanted = webhook["events"].split(",")
    if "*" not in wanted and event["type"] not in wanted:
        return False
    return webhook["scope"] == "all" or webhook["owner_id"] == event["doctor_id"]


def deliveries_of(event: Row, webhooks: Iterable[Row], now: datetime) -> list[dict[str, Any]]:
    """The deliveries one event makes: an email to each recipient of its kind, a POST to each subscribed webhook."""
    rows = [{"event_id": event["id"], "channel": "email", "recipient": str(event[f"{who}_id"]), "webhook_id": None,
             "now": now} for who in EMAILED.get(event["type"], ())]
    rows += [{"event_id": event["id"], "channel": "webhook", "recipient": str(w["id"]), "webhook_id": w["id"],
              "now": now} for w in webhooks if subscribed(w, event)]
    return rows


async def fan_out(db: Database, limit: int = FAN_OUT_BATCH) -> tuple[list[int], bool]:
    """Make the deliveries of up to `limit` undispatched events, in one transaction (events another worker is
    fanning out are skipped, not waited for). Returns the new pending deliveries' ids and whether there may be more
    events."""
    async with db.transaction() as tx:
        events = await tx.fetch_all("lock_undispatched_events", {"limit": limit})
        if not events:
            return [], False
        doctor_ids = tuple({e["doctor_id"] for e in events})
        webhooks = await tx.fetch_all("list_webhooks_for_doctors", {"doctor_ids": doctor_ids})
        now = utcnow()
        rows = [row for event in events for row in deliveries_of(event, webhooks, now)]
        if rows:
            await tx.execute_many("insert_deliveries", rows)
        event_ids = tuple(e["id"] for e in events)
        await tx.execute("mark_events_dispatched", {"ids": event_ids, "now": now})
        made = await tx.fetch_all("pending_deliveries_of_events", {"ids": event_ids}) if rows else []
    return [row["id"] for row in made], len(events) == limit


async def due_deliveries(db: Database, limit: int = SWEEP_BATCH) -> list[int]:
    """Pending deliveries whose time has come and that no live worker holds."""
    return [row["id"] for row in await db.fetch_all("list_due_deliveries", {"now": utcnow(), "limit": limit})]


async def backlog(db: Database) -> tuple[int, int]:
    """For /metrics: events not yet fanned out, and deliveries whose attempt is due (each one index range)."""
    async with db.connection() as conn:
        return (await conn.fetch_value("count_undispatched_events"),
                await conn.fetch_value("count_due_deliveries", {"now": utcnow()}))


# --- one delivery ------------------------------------------------------------------------------------------------

async def claim(db: Database, ids: list[int]) -> list[Row]:
    """Take the due, pending deliveries among `ids` for one attempt each (those another worker holds, or that are
    done or not due, are left out), with their events and, for webhooks, the endpoints."""
    if not ids:
        return []
    now = utcnow()
    token = uuid.uuid4().hex
    claimed, _ = await db.execute("claim_deliveries", {
        "ids": tuple(ids), "claim": token, "now": now, "until": now + timedelta(seconds=CLAIM_SECONDS)})
    if not claimed:
        return []
    rows = await db.fetch_all("list_claimed_deliveries", {"ids": tuple(ids), "claim": token})
    for row in rows:
        row["claim"] = token
        row["data"] = msgspec.json.decode(row["payload"])
    return rows


async def delivered(db: Database, deliveries: list[Row], response_code: int | None = None) -> None:
    """Mark a batch's successful deliveries (all of one claim) delivered, in one statement."""
    if deliveries:
        await db.execute("deliveries_succeeded", {"ids": tuple(d["id"] for d in deliveries),
                                                  "claim": deliveries[0]["claim"], "now": utcnow(),
                                                  "code": response_code})


async def skipped(db: Database, delivery: Row, why: str) -> None:
    """Not to be delivered after all (a reminder of an appointment cancelled meanwhile, a disabled endpoint)."""
    await db.execute("delivery_skipped", {"id": delivery["id"], "error": why[:500]})


def backoff(attempts: int, delays: list[float]) -> float | None:
    """Seconds until the next try after `attempts` failed ones, with ±20 % jitter; None when they are used up."""
    if attempts > len(delays):
        return None
    return delays[attempts - 1] * random.uniform(0.8, 1.2)


async def failed_attempt(db: Database, delivery: Row, error: str, response_code: int | None,
                         delays: list[float]) -> float | None:
    """Record a failed attempt (the claim counted it): the delivery waits for its next try, whose delay is
    returned, or, its retries used up, is failed, and a webhook that failed for so long is disabled."""
    delay = backoff(delivery["attempts"], delays)
    now = utcnow()
    params = {"id": delivery["id"], "error": error[:500], "code": response_code}
    if delay is not None:
        await db.execute("delivery_will_retry", {**params, "next": now + timedelta(seconds=delay)})
        return delay
    async with db.transaction() as tx:
        await tx.execute("delivery_failed", params)
        if delivery["webhook_id"] is not None:
            reason = (f"disabled at {rfc3339(now)}: delivery {delivery['id']} failed {delivery['attempts']} times "
                      f"(last: {error[:200]}); register the endpoint again once it works")
            await tx.execute("disable_webhook", {"id": delivery["webhook_id"], "now": now, "reason": reason})
    return None
