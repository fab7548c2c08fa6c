"""The worker's notification jobs: fanning the outbox out and delivering in batches (email, webhook), and the sweep
that makes reminders and takes up again whatever is due: retries, and what a lost Redis or a killed worker left."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.core import outbox
from service.core.calendars import Invites, notification_email
from service.core.db import Database, Row
from service.core.outbox import REMINDER
from service.core.queue import DISPATCH_QUEUED
from service.core.reminders import going_ahead, make_due_reminders
from service.core.settings import Settings
from service.core.times import utcnow
from worker.mail import send_messages
from worker.webhooks import DeliveryError, WebhookSender

log = logging.getLogger("worker.notify")
MAX_FAN_OUT_ROUNDS = 20  # a job's bound; the next job or the sweep goes on
WEBHOOKS_AT_ONCE = 20  # per batch

Context = dict[str, Any]


async def startup(ctx: Context) -> None:
    settings: Settings = ctx["settings"]
    ctx["webhooks"] = WebhookSender(settings)
    # Delivering batches take at most half of the worker's job slots, so a slow receiver (or SMTP server) never holds
    # bookings back: a job finding them all taken leaves its deliveries to the sweep.
    ctx["delivery_slots"] = asyncio.Semaphore(max(1, settings.worker_max_jobs // 2))


async def shutdown(ctx: Context) -> None:
    if "webhooks" in ctx:
        await ctx["webhooks"].close()


async def dispatch_outbox(ctx: Context) -> int:
    """Fan the outbox's new events out into deliveries, and deliver them."""
    # Events committed from now on queue a job of their own (this one may read before them; see enqueue_dispatch).
    await ctx["redis"].delete(DISPATCH_QUEUED)
    made_count = 0
    for _ in range(MAX_FAN_OUT_ROUNDS):
        made, more = await outbox.fan_out(ctx["db"])
        await deliver(ctx, made)
        made_count += len(made)
        if not more:
            break
    return made_count


async def deliver(ctx: Context, ids: list[int]) -> None:
    """One attempt at each of these deliveries that is due and no other worker holds; each outcome recorded.
    A delivery not attempted here (all delivery slots taken, or claimed elsewhere) stays due for the sweep."""
    slots: asyncio.Semaphore = ctx["delivery_slots"]
    if not ids or slots.locked():
        return
    async with slots:
        db: Database = ctx["db"]
        claimed = await outbox.claim(db, ids)
        if not claimed:
            return
        emails = [d for d in claimed if d["channel"] == "email"]
        hooks = [d for d in claimed if d["channel"] == "webhook"]
        await asyncio.gather(send_emails(ctx, emails), send_webhooks(ctx, hooks))


async def send_emails(ctx: Context, deliveries: list[Row]) -> None:
    if not deliveries:
        return
    db: Database = ctx["db"]
    settings: Settings = ctx["settings"]
    people = {row["id"]: row for row in await db.fetch_all("find_people", {"ids": tuple(
        {d["doctor_id"] for d in deliveries} | {d["patient_id"] for d in deliveries})})}
    ahead = await going_ahead(db, {d["appointment_id"] for d in deliveries if d["type"] == REMINDER})
    sendable, messages = [], []
    now = utcnow()
    invites: Invites = {}  # each event's calendars, made once for its recipients
    for d in deliveries:
        doctor, patient, recipient = people.get(d["doctor_id"]), people.get(d["patient_id"]), people.get(
            int(d["recipient"]))
        if doctor is None or patient is None or recipient is None:
            await outbox.skipped(db, d, "the account is gone")
        elif d["type"] == REMINDER and d["appointment_id"] not in ahead:
            await outbox.skipped(db, d, "the appointment is no longer going ahead")
        else:
            sendable.append(d)
            messages.append(notification_email(d, recipient, doctor, patient, settings.mail_from, now, invites))
    outcomes = await send_messages(settings, messages)
    await outbox.delivered(db, [d for d, error in zip(sendable, outcomes, strict=True) if error is None])
    for d, error in zip(sendable, outcomes, strict=True):
        if error is not None:
            await failed(ctx, d, f"{type(error).__name__}: {error}", None)


async def send_webhooks(ctx: Context, deliveries: list[Row]) -> None:
    sender: WebhookSender = ctx["webhooks"]
    at_once = asyncio.Semaphore(WEBHOOKS_AT_ONCE)

    async def one(d: Row) -> None:
        if d["disabled_at"] is not None:
            await outbox.skipped(ctx["db"], d, "the endpoint is disabled")
            return
        async with at_once:
            try:
                code = await sender.send(d)
            except DeliveryError as exc:
                await failed(ctx, d, str(exc), exc.status)
                return
            except Exception as exc:  # noqa: BLE001 - whatever it was, it is a failed attempt, recorded
                await failed(ctx, d, f"{type(exc).__name__}: {exc}", None)
                return
        await outbox.delivered(ctx["db"], [d], code)

    await asyncio.gather(*(one(d) for d in deliveries))


async def failed(ctx: Context, delivery: Row, error: str, status: int | None) -> None:
    """A failed attempt: the sweep takes the delivery up again when its retry is due, or it has failed for good."""
    if await outbox.failed_attempt(ctx["db"], delivery, error, status, ctx["settings"].retry_delays) is None:
        log.warning("delivery %s failed for good after %s attempts: %s", delivery["id"], delivery["attempts"], error)


async def sweep_notifications(ctx: Context) -> int:
    """Make due reminders, fan out what no job fanned out, and deliver every due delivery no worker holds (retries,
    and what a lost Redis or a killed worker left)."""
    settings: Settings = ctx["settings"]
    reminders = await make_due_reminders(ctx["db"], settings.reminder_offsets)
    fanned = await dispatch_outbox(ctx)
    due = await outbox.due_deliveries(ctx["db"])
    await deliver(ctx, due)
    if reminders or due:
        log.info("notifications sweep: %d reminder(s) made, %d delivery(ies) made, %d due attempted", reminders,
                 fanned, len(due))
    return len(due)
