"""The worker's jobs: deciding bookings (holds included), refilling waitlists, sending email, sweeping up requests
whose job was lost and waitlists nobody refilled."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from redis.asyncio import Redis

from service.core import faults, waitlist
from service.core.appointments import stale_since
from service.core.booking import HoldPolicy, fail_request
from service.core.db import CONNECTION_LOST_ERRORS, Database, mysql_error_code
from service.core.logs import current_request_id, new_request_id
from service.core.queue import (
    REQUEST_ID_KWARG,
    Decided,
    decisions_announcement,
    enqueue_booking,
    enqueue_dispatch,
    enqueue_refill,
    publish_decisions,
    publish_schedule_changed,
    queued_marker_key,
    refill_marker_key,
)
from service.core.settings import Settings
from worker import notify
from worker.arq_ext import lease_commands, renew_leases
from worker.groups import GroupCommit
from worker.lock import DoctorLock
from worker.mail import send_email as deliver_email

log = logging.getLogger("worker")
# A line per batch, like arq's per-job lines: ACCESS_LOG=false silences it (arq_ext.logging_config).
access_log = logging.getLogger("worker.access")
LOCK_WAIT_SECONDS = 0.5
SWEEP_BATCH = 1000

Context = dict[str, Any]
Job = Callable[..., Awaitable[Any]]


def with_request_id(job: Job) -> Job:
    """`job`, with its log lines carrying the id of the request that queued it (core/queue.py's job_kwargs), or
    a new one for a job queued without (a cron job: each run its own, which the jobs it queues carry)."""

    @functools.wraps(job)
    async def run(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        # The job runs in a task of its own (arq's), so this stays the job's.
        current_request_id.set(kwargs.pop(REQUEST_ID_KWARG, None) or new_request_id())
        return await job(ctx, *args, **kwargs)

    return run


async def startup(ctx: Context) -> None:
    """Resources for the jobs, kept in ctx (the settings are there already: read once, in __main__)."""
    settings: Settings = ctx["settings"]
    ctx["db"] = await Database.connect(settings, min_size=2)
    ctx["group_commit"] = GroupCommit(ctx["db"], settings.booking_batch_size,
                                      HoldPolicy(settings.hold_seconds, settings.holds_per_patient),
                                      settings.worker_max_jobs)
    ctx["leases"] = set()
    ctx["lease_renewal"] = asyncio.create_task(renew_leases(ctx["redis"], ctx["leases"]))
    await notify.startup(ctx)
    gc.freeze()  # startup's objects live as long as the worker: keep full collections short (see api/app.py)


async def shutdown(ctx: Context) -> None:
    ctx["lease_renewal"].cancel()
    group: GroupCommit = ctx["group_commit"]
    log.info("group commit: %d transaction(s) decided %d doctor batch(es)", group.transactions, group.decided_doctors)
    await notify.shutdown(ctx)
    await ctx["db"].close()


def retry_delay(job_try: int) -> float:
    return min(0.05 * 2**job_try, 5.0)


async def book_appointment(ctx: Context, request_id: int, doctor_id: int) -> str:
    """Decide a booking request, with every other pending request of its doctor.

    Safe to run any number of times: a decided request is left as it is.
    """
    ctx["leases"].add(ctx["job_id"])
    try:
        return await decide_request(ctx, request_id, doctor_id)
    finally:
        ctx["leases"].discard(ctx["job_id"])


async def decide_request(ctx: Context, request_id: int, doctor_id: int) -> str:
    settings: Settings = ctx["settings"]
    redis: Redis = ctx["redis"]

    job_try: int = ctx["job_try"]
    last_try = job_try >= settings.booking_max_tries
    # On the last try go without the Redis lock rather than give up: MySQL's row lock is the guarantee.
    use_lock = settings.booking_redis_lock and not last_try
    lock = DoctorLock(redis, doctor_id, settings.booking_lock_ttl_ms) if use_lock else None
    # One round trip to start: requests stored from now on queue a job of their own (this job may read before
    # they are stored; see ENQUEUE_SCRIPT), the job's lease, and a first try at the doctor's lock.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(queued_marker_key(doctor_id))
        pipe.pexpire(*lease_commands(ctx["job_id"]))
        if lock is not None:
            lock.try_in(pipe)
        started = await pipe.execute()
    group: GroupCommit = ctx["group_commit"]
    alone = job_try >= 3  # retried twice: on its own, whatever failed (its group's doctors go alone at once)
    if lock is not None and not started[-1]:
        # Its marker deleted, this job's request is read by any transaction that starts from now on: one of this
        # worker's about to start for the doctor decides it, and one running now is followed by ours.
        if not alone and (shared := group.waiting_for(doctor_id)) is not None:
            return await decided_with_another_job(ctx, request_id, doctor_id, shared, last_try)
        if not alone and group.serializes(doctor_id):
            lock = None
        elif not await lock.acquire(LOCK_WAIT_SECONDS):
            raise Retry(defer=retry_delay(job_try))

    batch_size = group.batch_size
    decided_count = 0
    freed: set[int] = set()
    try:
        # A full batch may leave requests behind that counted on this job (they were folded into it): go on.
        while len((decided := await decide(group, doctor_id, alone, freed)).decisions) == batch_size:
            decided_count += batch_size
            log_decisions(decided)
            await publish_decisions(redis, decided)
    except Exception as exc:
        if lock is not None:
            await release(lock)
        return await retry_or_fail(ctx, request_id, doctor_id, exc, last_try)
    log_decisions(decided)
    if faults.armed:
        faults.hit("after_commit")
    await announce(redis, lock, decided, dispatch=bool(decided_count or decided.decisions))
    for freed_doctor in sorted(freed):  # appointments moved away: their old time may go to someone waiting
        await enqueue_refill(redis, freed_doctor)
    return f"decided {decided_count + len(decided.decisions)}"


async def decided_with_another_job(ctx: Context, request_id: int, doctor_id: int, shared: asyncio.Future[Decided],
                                   last_try: bool) -> str:
    """Wait for the decision another job of this worker announces (and does the rest for)."""
    try:
        decided = await asyncio.shield(shared)
    except Exception as exc:
        return await retry_or_fail(ctx, request_id, doctor_id, exc, last_try)
    return f"decided with another job of doctor {decided.doctor_id}"


async def decide(group: GroupCommit, doctor_id: int, alone: bool, freed: set[int]) -> Decided:
    """One committed batch, with the group's other doctors or `alone`; adds to `freed` the doctors whose time its
    reschedules freed."""
    decided = await (group.alone(doctor_id) if alone else group.decide(doctor_id))
    if any(d.rescheduled_from is not None for d in decided.decisions):
        freed.update({doctor_id, *decided.freed_doctor_ids})
    return decided


def log_decisions(decided: Decided) -> None:
    """One line per committed batch naming each request it decided and how, so a request folded into this job
    (queued by another HTTP request, whose id this line does not carry) is found by its own id."""
    if decided.decisions and access_log.isEnabledFor(logging.INFO):  # the line is built only to be written
        access_log.info("doctor %s: decided booking request(s) %s", decided.doctor_id, ", ".join(
            f"{d.request_id} {d.status}" + (f" ({d.reason})" if d.reason else "") for d in decided.decisions))


async def release(lock: DoctorLock) -> None:
    if not await lock.release():
        log.warning("%s expired before the booking finished", lock.key)


async def announce(redis: Redis, lock: DoctorLock | None, decided: Decided, dispatch: bool) -> None:
    """After the commit, in one round trip: release the doctor's lock, publish the decisions, and (`dispatch`: the
    batches wrote events to the outbox) ask for their delivery. A failed release or publish fails the job (its
    decisions stand: the long polls read them from MySQL once their wait for the message runs out); a dispatch that
    could not be asked for is left to the sweep."""
    announcement = decisions_announcement(redis, decided)
    async with redis.pipeline(transaction=False) as pipe:
        if lock is not None:
            lock.release_in(pipe, announcement)
        elif announcement is not None:
            pipe.publish(*announcement)
        if dispatch:
            await enqueue_dispatch(redis, pipe=pipe)
        replies = await pipe.execute(raise_on_error=False)
    if dispatch and isinstance(replies[-1], Exception):
        log.warning("could not queue the outbox's dispatch (the sweep will): %r", replies[-1])
        replies = replies[:-1]
    if errors := [reply for reply in replies if isinstance(reply, Exception)]:
        raise errors[0]
    if lock is not None and not replies[0]:
        log.warning("%s expired before the booking finished", lock.key)


async def retry_or_fail(ctx: Context, request_id: int, doctor_id: int, exc: Exception, last_try: bool) -> str:
    """After a failed decision: try again later, or, on the last try, mark the request failed."""
    if not last_try:
        log.warning("booking request %s, try %s: %r; retrying", request_id, ctx["job_try"], exc)
        raise Retry(defer=retry_delay(ctx["job_try"])) from exc
    if mysql_error_code(exc) in CONNECTION_LOST_ERRORS:
        # MySQL is away, not the request at fault: leave it pending; the sweep queues it once MySQL is back.
        raise exc
    log.error("booking request %s failed after %s tries: %r", request_id, ctx["job_try"], exc)
    failed = await fail_request(ctx["db"], request_id)
    if failed is None:  # another job decided it meanwhile: that decision stands, and was published
        return "already decided"
    log_decisions(failed)
    await publish_decisions(ctx["redis"], failed)
    return "failed"


async def refill_waitlist(ctx: Context, doctor_id: int) -> str:
    """Offer a doctor's freed time to the waitlist (core/waitlist.py). Safe to run any number of times; a job
    of a dead worker runs again within seconds (its lease lapses), and the sweep queues one for every doctor with
    someone waiting."""
    settings: Settings = ctx["settings"]
    redis: Redis = ctx["redis"]
    ctx["leases"].add(ctx["job_id"])
    try:
        async with redis.pipeline(transaction=False) as pipe:  # later changes queue a refill of their own
            pipe.delete(refill_marker_key(doctor_id))
            pipe.pexpire(*lease_commands(ctx["job_id"]))
            await pipe.execute()
        try:
            done = await waitlist.refill(ctx["db"], doctor_id, settings.hold_seconds, settings.holds_per_patient)
        except Exception as exc:
            log.warning("waitlist refill of doctor %s, try %s: %r; retrying", doctor_id, ctx["job_try"], exc)
            raise Retry(defer=retry_delay(ctx["job_try"])) from exc
    finally:
        ctx["leases"].discard(ctx["job_id"])
    if done.changed_schedule:
        access_log.info("doctor %s: waitlist refilled: %d hold(s) expired, offers %s, booked %s", doctor_id,
                        done.expired, done.offers, done.booked)
        await publish_schedule_changed(redis, doctor_id)
    if done.offers or done.booked:  # their events (the offer's email and webhooks, a booking's confirmation)
        await enqueue_dispatch(redis)
    return f"expired {done.expired}, offered {len(done.offers)}, booked {len(done.booked)}"


async def send_email(ctx: Context, to: str, subject: str, body: str) -> None:
    await deliver_email(ctx["settings"], to, subject, body)


async def sweep_pending(ctx: Context) -> int:
    """Queue again every request pending for longer than it should be: its job was lost with Redis or a
    worker. Re-queueing one whose job still exists is a no-op (same job id)."""
    settings: Settings = ctx["settings"]
    before = stale_since(settings.sweep_after_seconds)
    stale = await ctx["db"].fetch_all("list_stale_pending_requests", {"before": before, "limit": SWEEP_BATCH})
    queued = [row["id"] for row in stale
              if await enqueue_booking(ctx["redis"], row["id"], row["doctor_id"], fold=False)]
    if queued:
        log.info("sweep queued %d pending booking request(s) again: %s", len(queued), queued[:20])
    # Waitlists: a refill for each doctor with someone waiting or a lapsed hold still marked held, so an offer
    # never depends on the job queued after a change having survived.
    for doctor_id in await waitlist.doctors_with_work(ctx["db"], SWEEP_BATCH):
        await enqueue_refill(ctx["redis"], doctor_id)
    return len(queued)
