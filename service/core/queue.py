"""The contract between the API and the worker: job names and ids, the enqueue script, the decisions message and
the pub/sub channels.

Jobs are queued in arq's own format (pickled {t, f, a, k, et}, under arq's key names) by one Lua script, so the API
process never imports arq. arq is pinned to the exact version this was written against, and a test decodes what
`enqueue` writes with arq's own deserializer (tests/test_booking.py).
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from datetime import datetime
from functools import cache
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from service.core.logs import current_request_id

log = logging.getLogger("service.queue")

# arq's key layout (arq.constants).
QUEUE_NAME = "arq:queue"
JOB_KEY_PREFIX = "arq:job:"
RESULT_KEY_PREFIX = "arq:result:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"

# The worker's job functions, by name.
BOOK_JOB = "book_appointment"
SEND_EMAIL_JOB = "send_email"
DISPATCH_JOB = "dispatch_outbox"  # fan new outbox events out into deliveries and deliver them (core/outbox.py)
REFILL_JOB = "refill_waitlist"

# The job's keyword argument naming the request that queued it (the X-Request-ID of its log lines), which the
# worker sets again for the job's own lines (worker/jobs.py).
REQUEST_ID_KWARG = "x_request_id"

JOB_EXPIRES_MS = 24 * 3600 * 1000  # as arq: a job not started within a day is dropped (the sweep re-queues)
# A marker outliving its job (say the job's worker died before starting it) only holds new requests back from
# queueing their own until it lapses; the sweep decides them meanwhile.
QUEUED_MARKER_MS = 30_000


def booking_job_id(request_id: int) -> str:
    """arq's job id for a request: enqueueing it again while it is queued or running is a no-op."""
    return f"booking:{request_id}"


def queued_marker_key(doctor_id: int) -> str:
    """Set while a booking job of this doctor waits in the queue and has not yet started reading."""
    return f"booking:queued:{doctor_id}"


def serialize_job(function: str, args: tuple[Any, ...], enqueued_ms: int,
                  kwargs: dict[str, Any] | None = None) -> bytes:
    """A job as arq's `serialize_job` writes it (pickle is arq's default serializer)."""
    return pickle.dumps({"t": None, "f": function, "a": args, "k": kwargs or {}, "et": enqueued_ms})


def job_kwargs() -> dict[str, Any]:
    """What every job carries besides its arguments: the id of the request (or sweep) that queued it, if any."""
    request_id = current_request_id.get()
    return {REQUEST_ID_KWARG: request_id} if request_id else {}


# What arq's enqueue_job does (skip if the job or its result exists, store the job, add it to the queue), in one
# atomic round trip instead of its four (WATCH, EXISTS, MULTI … EXEC): this sits on every POST /appointments.
#
# Plus folding: a job decides every pending request of its doctor, so while one of the doctor's jobs is queued and
# not yet started (its marker, KEYS[4], is set), a new request needs no job of its own: it was committed before
# this script ran, so before that job deletes the marker and reads (worker/jobs.py). Under load this turns many
# jobs into one batch. ARGV[5] = '0' (the sweep, other jobs) queues the job whatever the marker says.
ENQUEUE_SCRIPT = """
if ARGV[5] == '1' and redis.call('exists', KEYS[4]) == 1 then return 0 end
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
if KEYS[4] ~= '' then redis.call('psetex', KEYS[4], ARGV[6], ARGV[4]) end
return 1
"""


@cache
def _enqueue_script(redis: Redis) -> AsyncScript:
    return redis.register_script(ENQUEUE_SCRIPT)


async def enqueue(redis: Redis, function: str, args: tuple[Any, ...], job_id: str, *, marker: str = "",
                  fold: bool = False, defer_ms: int = 0, pipe: Pipeline | None = None) -> bool:
    """Queue one job in one round trip, to start `defer_ms` from now; False if it was not added (the same job id is
    queued or running, or `fold` and the `marker` key is set). `marker`, if given, is set while the job waits. The
    job carries the current request id (job_kwargs). With `pipe`, it is queued in that pipeline (its reply, 1 if
    added, comes with the pipeline's)."""
    now_ms = int(time.time() * 1000)
    job = serialize_job(function, args, now_ms, job_kwargs())
    keys = [JOB_KEY_PREFIX + job_id, RESULT_KEY_PREFIX + job_id, QUEUE_NAME, marker]
    script_args = [JOB_EXPIRES_MS, job, now_ms + defer_ms, job_id, int(fold), QUEUED_MARKER_MS]
    if pipe is not None:  # as EVAL: a pipeline of registered scripts asks SCRIPT EXISTS first, a round trip more
        pipe.eval(ENQUEUE_SCRIPT, len(keys), *keys, *script_args)
        return True
    return bool(await _enqueue_script(redis)(keys=keys, args=script_args))


async def enqueue_booking(redis: Redis, request_id: int, doctor_id: int, *, fold: bool = True) -> bool:
    """Queue the decision of a stored request. False if no job was added: a queued job of its doctor will
    decide it (`fold`), its own job is queued already, or Redis is out of reach (with a log line).

    The request is safe in MySQL either way: the sweep queues whatever stays pending.
    """
    try:
        return await enqueue(redis, BOOK_JOB, (request_id, doctor_id), booking_job_id(request_id),
                             marker=queued_marker_key(doctor_id), fold=fold)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not queue booking request %s (the sweep will): %r", request_id, exc)
        return False


DISPATCH_QUEUED = "outbox:dispatch-queued"  # set while a dispatch job waits in the queue, not yet started
# A dispatch job starts this long after the commit that asked for it, and every commit meanwhile folds into it: under
# load one job fans out and sends a few hundred events instead of a handful (its statements and its SMTP session
# shared), for a fifth of a second on an email.
DISPATCH_GATHER_MS = 200


async def enqueue_dispatch(redis: Redis, pipe: Pipeline | None = None) -> None:
    """Ask a worker to fan out and deliver the outbox's new events (after the commit that wrote them). While a
    dispatch job waits unstarted (its marker is set), none is added: that job reads after this commit (it deletes
    the marker first, as booking jobs do). If Redis is away, the sweep does it later. With `pipe`, it is queued in
    that pipeline (whose caller sees any error)."""
    try:
        await enqueue(redis, DISPATCH_JOB, (), f"outbox:{uuid.uuid4().hex}", marker=DISPATCH_QUEUED, fold=True,
                      defer_ms=DISPATCH_GATHER_MS, pipe=pipe)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not queue the outbox's dispatch (the sweep will): %r", exc)
def refill_marker_key(doctor_id: int) -> str:
    """Set while a refill job of this doctor waits in the queue and has not yet started reading."""
    return f"refill:queued:{doctor_id}"


async def enqueue_refill(redis: Redis, doctor_id: int) -> bool:
    """After a commit that freed or added time in a doctor's schedule: queue the doctor's waitlist refill, unless
    one is queued and not yet started (it will read this commit: the job deletes its marker before it reads, as a
    booking job does). A fresh job id each time, so one that is running does not swallow this one. Redis out of
    reach: a log line; the sweep queues a refill for every doctor with someone waiting."""
    try:
        return await enqueue(redis, REFILL_JOB, (doctor_id,), f"refill:{doctor_id}:{uuid.uuid4().hex}",
                             marker=refill_marker_key(doctor_id), fold=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not queue the waitlist refill of doctor %s (the sweep will): %r", doctor_id, exc)
        return False


async def queue_depth(redis: Redis) -> int:
    """Jobs in arq's queue: waiting, deferred for a retry, or running (arq removes a job once it ends)."""
    return await redis.zcard(QUEUE_NAME)


async def enqueue_email(redis: Redis, to: str, subject: str, body: str) -> bool:
    return await enqueue(redis, SEND_EMAIL_JOB, (to, subject, body), uuid.uuid4().hex)


# --- what the worker announces after its commit --------------------------------------------------------------

class Decision(msgspec.Struct, array_like=True, gc=False):
    request_id: int
    status: str  # confirmed | rejected | failed
    reason: str | None = None
    appointment_id: int | None = None
    rescheduled_from: int | None = None  # a reschedule: the appointment it moved
    hold_id: int | None = None  # a hold: the hold made; a confirm_hold: the hold confirmed
    # The span and type it shows taken to anyone asking for the same (api/schedule_cache.py's KnownTaken), which every
    # API process hearing it may refuse at once for a while (booking.shown_taken).
    taken: tuple[datetime, datetime, int | None] | None = None


class Decided(msgspec.Struct, array_like=True, gc=False):
    """One transaction's decisions: what the worker publishes once they are committed."""

    doctor_id: int
    decided_at: datetime
    decisions: list[Decision]
    # Doctors whose time a reschedule of the batch freed, besides `doctor_id` (their slot caches must go too).
    freed_doctor_ids: list[int] = msgspec.field(default_factory=list)


_decided_decoder = msgspec.json.Decoder(Decided)


def decided_message(decided: Decided) -> bytes:
    return msgspec.json.encode(decided)


def read_decided_message(data: bytes) -> Decided:
    return _decided_decoder.decode(data)


# --- pub/sub channels -------------------------------------------------------------------------------------------
# Pub/sub channels span every database of a Redis server, but booking requests, users and doctors belong to one
# deployment, whose queue lives in one database. So each channel name carries that database's number: deployments
# (or test runs) sharing a server never hear each other's messages, whose ids would name other rows.

DECISIONS = "booking:decisions"  # the worker's decisions, after its commit (Decided)
USERS_CHANGED = "accounts:changed"  # a user id whose cached copy is out of date (a password change)
SCHEDULE_CHANGED = "doctors:schedule-changed"  # a doctor id whose windows or appointments changed


def channel(redis: Redis, name: str) -> str:
    return f"{name}:db{redis.connection_pool.connection_kwargs.get('db', 0)}"


def decisions_announcement(redis: Redis, decided: Decided) -> tuple[str, bytes] | None:
    """The channel and message that wake the API processes long-polling these requests (None if there are no
    decisions: an empty message would name no request). The message carries each outcome, so a woken poll
    answers without reading MySQL again."""
    return (channel(redis, DECISIONS), decided_message(decided)) if decided.decisions else None


async def publish_decisions(redis: Redis, decided: Decided) -> None:
    if (announcement := decisions_announcement(redis, decided)) is not None:
        await redis.publish(*announcement)


async def publish_user_changed(redis: Redis, user_id: int) -> None:
    """Tell every API process to forget what it cached about this user (e.g. after a password change)."""
    await redis.publish(channel(redis, USERS_CHANGED), str(user_id))


async def publish_schedule_changed(redis: Redis, doctor_id: int) -> None:
    await redis.publish(channel(redis, SCHEDULE_CHANGED), str(doctor_id))
