"""`python -m worker`: the arq worker with WorkerSettings, claiming jobs in one round trip (see claim.py)."""

import logging.config

from arq.logs import default_log_config
from arq.worker import get_kwargs

from worker import WorkerSettings
from worker.claim import ClaimingWorker

logging.config.dictConfig(default_log_config(verbose=False))
ClaimingWorker(**get_kwargs(WorkerSettings)).run()
