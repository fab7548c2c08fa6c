"""Everything that reaches into arq's internals, in one place. arq is pinned to the exact version (pyproject.toml):
it is in maintenance mode upstream, so nothing moves silently, and tests/test_framework_still_needs.py checks
the pin. (The job format the API writes without importing arq is core/queue.py's, checked against arq's own
deserializer in tests/test_booking.py.)

- `ClaimingWorker`: claims the jobs of a poll in one round trip.
- `renew_leases`: arq's in-progress mark held as a short lease, so a dead worker's job reruns within seconds.
- `logging_config`: the worker's logging: arq's and the jobs', one format, its per-job lines behind ACCESS_LOG.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from service.core.logs import FILTERS, formatter

# How long a booking job stays "in progress" in arq after its worker stops renewing the mark (see renew_leases).
JOB_LEASE_MS = 5000

# arq claims each job it read from the queue with WATCH, EXISTS, ZSCORE and MULTI … EXEC: four round trips a job,
# and every other worker that read the same ids pays three of them to find the job taken. On the booking path
# that was the largest cost of the worker beyond the booking itself. This script does the same checks and sets the
# same in-progress mark, for all the ids of a poll, atomically; running a job is left to arq.
#
# KEYS: the queue, then each job's in-progress key; ARGV: now (ms), the in-progress mark's lifetime (ms), how many
# to claim at most, job ids. A job is claimed if it is still queued, due, and not in progress: arq's own
# conditions. As arq does, the ids are tried in order until enough are claimed: the first ones are often running.
CLAIM_SCRIPT = """
local claimed = {}
for i = 2, #KEYS do
    if #claimed >= 2 * tonumber(ARGV[3]) then break end
    local job_id = ARGV[i + 2]
    local score = redis.call('zscore', KEYS[1], job_id)
    if score and tonumber(score) <= tonumber(ARGV[1]) and redis.call('exists', KEYS[i]) == 0 then
        redis.call('psetex', KEYS[i], ARGV[2], '1')
        claimed[#claimed + 1] = job_id
        claimed[#claimed + 1] = score
    end
end
return claimed
"""


class ClaimingWorker(Worker):
    """arq's worker, claiming the jobs of a poll in one round trip."""

    _claim: AsyncScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0:
            return
        # A job stays in the queue while it runs, so a poll reads this worker's own running jobs again (every 5 ms
        # under load): those are never claimable, and a poll that finds nothing else makes no round trip.
        job_ids = [job_id for job_id in job_ids if not self.running_here(job_id)]
        if not job_ids:
            return
        if self._claim is None:
            self._claim = self.pool.register_script(CLAIM_SCRIPT)
        claimed = await self._claim(
            keys=[self.queue_name, *(in_progress_key_prefix + job_id.decode() for job_id in job_ids)],
            args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), free, *job_ids],
        )
        for job_id, score in zip(claimed[::2], claimed[1::2], strict=True):
            await self.sem.acquire()  # never waits: job_counter < max_jobs, and the two move together
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id.decode(), int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    def running_here(self, job_id: bytes) -> bool:
        """Whether this worker runs the job now (a finished one may be queued again under its id: keep_result=0)."""
        task = self.tasks.get(job_id.decode())
        return task is not None and not task.done()


def lease_commands(job_id: str) -> tuple[str, int]:
    """The key and lifetime (for PEXPIRE) of a job's lease: taken when the job starts, in its first round trip."""
    return in_progress_key_prefix + job_id, JOB_LEASE_MS


async def renew_leases(redis: Redis, job_ids: set[str]) -> None:
    """Hold arq's in-progress mark of each running booking job as a lease of JOB_LEASE_MS.

    arq sets the mark for the job timeout + 10 s (70 s) and no worker starts the job, which stays queued, while
    it is there; enqueueing it again (the sweep) is a no-op. So a worker killed mid-job would leave its request
    pending for 70 s. As a lease (set when the job starts, renewed here for all of the worker's jobs in one round
    trip a second), the mark of a dead or frozen worker's job lapses within seconds, and the next worker to poll
    runs the job again: safe, since a job may run any number of times.
    """
    while True:
        await asyncio.sleep(JOB_LEASE_MS / 5000)
        if not job_ids:
            continue
        with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.pexpire(*lease_commands(job_id))
                await pipe.execute()


def logging_config(access_log: bool, json_lines: bool) -> dict[str, Any]:
    """The worker's logging, set up here once: arq's own loggers and the jobs' (worker.*, service.*, which arq
    leaves below WARNING), every line in one format (text or JSON, LOG_FORMAT) with the request id of the job.

    arq logs two lines per job, the worker's access log: ACCESS_LOG=false keeps only its warnings. (arq's CLI would
    reset these levels after importing the settings, which is one reason the worker starts with `python -m worker`.)
    arq's own lines of a job (start, end) are logged outside the job's task and carry no request id; they name the
    job, whose id names the booking request.
    """
    loggers: dict[str, Any] = {name: {"handlers": ["service"], "level": "INFO", "propagate": False}
                               for name in ("arq", "worker", "service", "py.warnings")}
    loggers["arq.worker"] = {"level": "INFO" if access_log else "WARNING"}
    loggers["worker.access"] = {"level": "INFO" if access_log else "WARNING"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": formatter(json_lines)},
        "filters": FILTERS,
        "handlers": {"service": {"class": "logging.StreamHandler", "formatter": "service", "filters": ["request_id"]}},
        "loggers": loggers,
    }
