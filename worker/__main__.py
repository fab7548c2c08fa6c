"""`python -m worker`: settings read once, logging, uvloop, then arq's worker claiming jobs in one round trip."""

from __future__ import annotations

import logging.config
import os
import sys
from typing import Any

import uvloop
from arq import cron, func
from arq.connections import RedisSettings

from service.core import faults
from service.core.queue import BOOK_JOB, DISPATCH_JOB, REFILL_JOB, SEND_EMAIL_JOB
from service.core.settings import Settings, SettingsError
from worker.arq_ext import ClaimingWorker, logging_config
from worker.jobs import (
    book_appointment,
    refill_waitlist,
    send_email,
    shutdown,
    startup,
    sweep_pending,
    with_request_id,
)
from worker.notify import dispatch_outbox, sweep_notifications


def worker_options(settings: Settings) -> dict[str, Any]:
    """arq's Worker arguments for these settings."""
    return {
        "functions": [
            # keep_result=0: once a job ends its id is free again, so the sweep can queue a request anew.
            func(with_request_id(book_appointment), name=BOOK_JOB, keep_result=0,
                 max_tries=settings.booking_max_tries),
            func(with_request_id(refill_waitlist), name=REFILL_JOB, keep_result=0, max_tries=10),
            func(with_request_id(send_email), name=SEND_EMAIL_JOB, keep_result=0, max_tries=3),
            # It records every outcome itself (a delivery's retries are its own, in MySQL, taken up by the sweep).
            func(with_request_id(dispatch_outbox), name=DISPATCH_JOB, keep_result=0, max_tries=1),
        ],
        "cron_jobs": [cron(with_request_id(sweep), second=set(range(0, 60, settings.sweep_every_seconds)),
                           run_at_startup=True, keep_result=0)
                      for sweep in (sweep_pending, sweep_notifications)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        # arq's defaults (poll every 0.5 s, 100 jobs a poll) would add up to half a second to every booking.
        "poll_delay": settings.worker_poll_delay,
        "max_jobs": settings.worker_max_jobs,
        "queue_read_limit": settings.worker_max_jobs,
        "job_timeout": 60,
        "keep_result": 0,
        "ctx": {"settings": settings},
    }


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    faults.arm(os.environ)
    logging.config.dictConfig(logging_config(settings.access_log, settings.json_logs))
    logging.captureWarnings(True)  # a warning, too, is a line in the log's format
    uvloop.install()  # arq runs on whatever loop policy is installed; uvloop's is markedly cheaper per job
    ClaimingWorker(**worker_options(settings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
