"""The worker's notification jobs: fanning the outbox out, delivering (email, webhook), and the sweep that makes
reminders and queues again whatever a lost Redis or a killed worker left behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.core import outbox
from service.core.calendars import notification_email
from service.core.db import Database, Row
from service.core.outbox import REMINDER
from service.core.queue import DELIVER_JOB, delivery_job_id, enqueue_deliveries
from service.core.reminders import make_due_reminders, still_going_ahead
from service.core.settings import Settings
from service.core.times import utcnow
from worker.mail import send_message
from worker.webhooks import DeliveryError, WebhookSender

log = logging.getLogger("worker.notify")
MAX_FAN_OUT_ROUNDS = 20  # a job's bound; the next job or the sweep goes on

Context = dict[str, Any]


class Skip(Exception):  # noqa: N818 - not an error: the delivery is not to be made
    """The delivery is not to be made after all."""


async def startup(ctx: Context) -> None:
    settings: Settings = ctx["settings"]
    ctx["webhooks"] = WebhookSender(settings)
    # Deliveries take at most half of the worker's job slots, so a slow receiver never holds bookings back.
    ctx["delivery_slots"] = asyncio.Semaphore(max(1, settings.worker_max_jobs // 2))


async def shutdown(ctx: Context) -> None:
    if "webhooks" in ctx:
        await ctx["webhooks"].close()


async def dispatch_outbox(ctx: Context) -> int:
    """Fan the outbox's new events out into deliveries, and queue an attempt at each."""
    made_count = 0
    for _ in range(MAX_FAN_OUT_ROUNDS):
        made, more = await outbox.fan_out(ctx["db"])
        await enqueue_deliveries(ctx["redis"], made)
        made_count += len(made)
        if not more:
            break
    return made_count


async def deliver(ctx: Context, delivery_id: int) -> str:
    """One attempt at one delivery. Safe to run any number of times: only a due, unclaimed, pending delivery is
    attempted, and only by the worker that claimed it."""
    slots: asyncio.Semaphore = ctx["delivery_slots"]
    if slots.locked():
        return "busy"  # unclaimed: the sweep queues it again in a moment
    async with slots:
        db: Database = ctx["db"]
        delivery = await outbox.claim(db, delivery_id)
        if delivery is None:
            return "not due"
        settings: Settings = ctx["settings"]
        try:
            if delivery["channel"] == "email":
                await send_email(db, settings, delivery)
                code = None
            else:
                if delivery["disabled_at"] is not None:
                    raise Skip("the endpoint is disabled")
                code = await ctx["webhooks"].send(delivery)
        except Skip as skip:
            await outbox.skipped(db, delivery, str(skip))
            return f"skipped: {skip}"
        except Exception as exc:  # noqa: BLE001 - every failure is an attempt to record
            status = exc.status if isinstance(exc, DeliveryError) else None
            error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            delay = await outbox.failed_attempt(db, delivery, error, status, settings.retry_delays)
            if delay is None:
                log.warning("delivery %s failed for good after %s attempts: %s", delivery_id, delivery["attempts"],
                            error)
                return "failed"
            await ctx["redis"].enqueue_job(DELIVER_JOB, delivery_id, _defer_by=delay,
                                           _job_id=delivery_job_id(delivery_id, delivery["attempts"]))
            return f"retry in {delay:.1f} s: {error}"
        await outbox.delivered(db, delivery, code)
        return "delivered"


async def send_email(db: Database, settings: Settings, delivery: Row) -> None:
    people = {row["id"]: row for row in await db.fetch_all("find_people", {
        "doctor_id": delivery["doctor_id"], "patient_id": delivery["patient_id"]})}
    doctor, patient = people.get(delivery["doctor_id"]), people.get(delivery["patient_id"])
    recipient = people.get(int(delivery["recipient"]))
    if doctor is None or patient is None or recipient is None:
        raise Skip("the account is gone")
    if delivery["type"] == REMINDER and not await still_going_ahead(db, delivery["appointment_id"]):
        raise Skip("the appointment is no longer going ahead")
    await send_message(settings, notification_email(delivery, recipient, doctor, patient, settings.mail_from,
                                                    utcnow()))


async def sweep_notifications(ctx: Context) -> int:
    """Make due reminders, fan out what no job fanned out, and queue again every due delivery no worker holds
    (its job lost with Redis or a killed worker). Queueing one whose job still waits is a no-op (same job id)."""
    settings: Settings = ctx["settings"]
    reminders = await make_due_reminders(ctx["db"], settings.reminder_offsets)
    fanned = await dispatch_outbox(ctx)
    due = await outbox.due_deliveries(ctx["db"])
    await enqueue_deliveries(ctx["redis"], due)
    if reminders or due:
        log.info("notifications sweep: %d reminder(s) made, %d delivery(ies) made, %d queued again", reminders,
                 fanned, len(due))
    return len(due)
