"""arq's worker, claiming the jobs of a poll in one round trip.

arq claims each job it read from the queue with WATCH, EXISTS, ZSCORE and MULTI … EXEC: four round trips a job,
and every other worker that read the same ids pays three of them to find the job taken. On the booking path
that was the largest cost of the worker beyond the booking itself. This does the same checks and sets the same
in-progress mark, for all the ids of a poll, in one atomic script; running a job is left to arq.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript

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
    _claim: AsyncScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if not job_ids or free <= 0:
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
