"""`python -m worker`: the arq worker with WorkerSettings, claiming jobs in one round trip (see claim.py)."""

import logging.config

from arq.worker import get_kwargs

from service.settings import Settings
from worker import WorkerSettings, logging_config
from worker.claim import ClaimingWorker

logging.config.dictConfig(logging_config(Settings.from_env().access_log))
ClaimingWorker(**get_kwargs(WorkerSettings)).run()
