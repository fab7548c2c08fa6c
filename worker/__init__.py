"""The arq worker: `python -m worker`. (arq's own CLI, `arq worker.WorkerSettings`, runs it too, but claims
jobs the slow way, see claim.py, and logs every job whatever ACCESS_LOG says.)"""

from __future__ import annotations

from typing import Any

import uvloop
from arq import cron, func
from arq.connections import RedisSettings
from arq.logs import default_log_config

from service.settings import Settings
from worker.jobs import book_appointment, send_email, shutdown, startup, sweep_pending

_settings = Settings.from_env()


def logging_config(access_log: bool) -> dict[str, Any]:
    """arq's own logging, plus the jobs' loggers (worker.*, service.*), which it leaves below WARNING.

    arq logs two lines per job, the worker's access log: ACCESS_LOG=false keeps only its warnings.
    """
    config = default_log_config(verbose=False)
    config["loggers"]["arq.worker"] = {"level": "INFO" if access_log else "WARNING"}
    config["formatters"]["jobs"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s", "datefmt": "%H:%M:%S"}
    config["handlers"]["jobs"] = {"class": "logging.StreamHandler", "formatter": "jobs"}
    for name in ("worker", "service"):
        config["loggers"][name] = {"handlers": ["jobs"], "level": "INFO", "propagate": False}
    return config


uvloop.install()  # arq runs on whatever loop policy is installed; uvloop's is markedly cheaper per job


class WorkerSettings:
    functions = [
        # keep_result=0: once a job ends its id is free again, so the sweep can queue a request anew.
        func(book_appointment, keep_result=0, max_tries=_settings.booking_max_tries),
        func(send_email, keep_result=0, max_tries=3),
    ]
    cron_jobs = [cron(sweep_pending, second=set(range(0, 60, _settings.sweep_every_seconds)), run_at_startup=True,
                      keep_result=0)]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_settings.redis_url)
    # arq's defaults (poll every 0.5 s, 100 jobs a poll) would add up to half a second to every booking.
    poll_delay = _settings.worker_poll_delay
    max_jobs = _settings.worker_max_jobs
    queue_read_limit = _settings.worker_max_jobs
    job_timeout = 60
    keep_result = 0
