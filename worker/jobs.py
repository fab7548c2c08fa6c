"""The worker's jobs: deciding bookings, sending email, sweeping up requests whose job was lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from arq import Retry
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from service.booking import (
    RETRIES_EXHAUSTED,
    decide_for_doctor,
    enqueue_booking,
    publish_decisions,
)
from service.db import CONNECTION_LOST_ERRORS, Database, mysql_error_code
from service.faults import fault_point
from service.settings import Settings
from service.times import utcnow
from worker.lock import DoctorLock
from worker.mail import send_email as deliver_email

log = logging.getLogger("worker")
LOCK_WAIT_SECONDS = 0.5
SWEEP_BATCH = 1000
# How long a booking job stays "in progress" in arq after its worker stops renewing the mark (see job_lease).
JOB_LEASE_MS = 5000

Context = dict[str, Any]


async def startup(ctx: Context) -> None:
    settings = Settings.from_env()
    ctx["settings"] = settings
    ctx["db"] = await Database.connect(settings, min_size=2)


async def shutdown(ctx: Context) -> None:
    await ctx["db"].close()


def retry_delay(job_try: int) -> float:
    return min(0.05 * 2**job_try, 5.0)


@contextlib.asynccontextmanager
async def job_lease(redis: Redis, job_id: str) -> AsyncIterator[None]:
    """Hold arq's in-progress mark of this job as a lease of JOB_LEASE_MS, renewed while the job runs.

    arq sets the mark for the job timeout + 10 s (70 s) and no worker starts the job, which stays queued, while
    it is there; enqueueing it again (the sweep) is a no-op. So a worker killed mid-job would leave its request
    pending for 70 s. As a lease, the mark of a dead (or frozen) worker's job lapses within seconds, and the
    next worker to poll runs the job again: safe, since a job may run any number of times.
    """
    key = in_progress_key_prefix + job_id

    async def renew() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                await redis.pexpire(key, JOB_LEASE_MS)
            await asyncio.sleep(JOB_LEASE_MS / 5000)

    renewing = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing


async def book_appointment(ctx: Context, request_id: int) -> str:
    """Decide a booking request, with the other pending requests of its doctor in the same transaction.

    Safe to run any number of times: a decided request is left as it is.
    """
    async with job_lease(ctx["redis"], ctx["job_id"]):
        return await decide_request(ctx, request_id)


async def decide_request(ctx: Context, request_id: int) -> str:
    settings: Settings = ctx["settings"]
    db: Database = ctx["db"]
    state = await db.fetch_one("find_booking_request_status", {"id": request_id})
    if state is None or state["status"] != "pending":
        return "already decided" if state else "no such request"

    job_try: int = ctx["job_try"]
    last_try = job_try >= settings.booking_max_tries
    lock = None
    # On the last try go without the Redis lock rather than give up: MySQL's row lock is the guarantee.
    if settings.booking_redis_lock and not last_try:
        lock = DoctorLock(ctx["redis"], state["doctor_id"], settings.booking_lock_ttl_ms)
        if not await lock.acquire(LOCK_WAIT_SECONDS):
            raise Retry(defer=retry_delay(job_try))
    try:
        decisions = await decide_for_doctor(db, state["doctor_id"], settings.booking_batch_size)
    except Exception as exc:
        if not last_try:
            log.warning("booking request %s, try %s: %r; retrying", request_id, job_try, exc)
            raise Retry(defer=retry_delay(job_try)) from exc
        if mysql_error_code(exc) in CONNECTION_LOST_ERRORS:
            # MySQL is away, not the request at fault: leave it pending; the sweep queues it once MySQL is back.
            raise
        log.error("booking request %s failed after %s tries: %r", request_id, job_try, exc)
        await db.execute("fail_booking_request", {"id": request_id, "reason": RETRIES_EXHAUSTED, "now": utcnow()})
        await publish_decisions(ctx["redis"], [request_id])
        return "failed"
    finally:
        if lock is not None and not await lock.release():
            log.warning("the lock on doctor %s expired before the booking finished", state["doctor_id"])
    fault_point("after_commit")
    decided = [d.request_id for d in decisions]
    await publish_decisions(ctx["redis"], decided, drop_jobs_of=[i for i in decided if i != request_id])
    return f"decided {len(decisions)}"


async def send_email(ctx: Context, to: str, subject: str, body: str) -> None:
    await deliver_email(ctx["settings"], to, subject, body)


async def sweep_pending(ctx: Context) -> int:
    """Queue again every request pending for longer than it should be: its job was lost with Redis or a
    worker. Re-queueing one whose job still exists is a no-op (same job id)."""
    settings: Settings = ctx["settings"]
    before = utcnow() - timedelta(seconds=settings.sweep_after_seconds)
    stale = await ctx["db"].fetch_all("list_stale_pending_requests", {"before": before, "limit": SWEEP_BATCH})
    queued = [row["id"] for row in stale if await enqueue_booking(ctx["redis"], row["id"])]
    if queued:
        log.info("sweep queued %d pending booking request(s) again: %s", len(queued), queued[:20])
    return len(queued)
