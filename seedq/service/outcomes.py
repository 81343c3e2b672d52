"""How a finished, failed, retried, stopped or refused job is recorded on the RQ side.

Mixed into :class:`~seedq.service.worker.TreeWorker` (an ``rq`` ``BaseWorker``), so RQ's own
registries, results and worker statistics stay right and tools such as rq-dashboard show
seedq jobs as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import CanceledJobRegistry
from rq.utils import now
from rq.worker import BaseWorker

from seedq import queue as q
from seedq.service.usage import JobUsage
from seedq.store.models import JobStatus
from seedq.store.rows import Claimed, ClaimRefused

if TYPE_CHECKING:
    from seedq.service.context import Services
    from seedq.settings import Settings
    from seedq.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A job this worker is running: its claim, its RQ job and execution, its task, and what
    served it (``usage``: models and target busy time, recorded in ``jobs.result``)."""

    claim: Claimed
    rq_job: RQJob
    execution: Execution
    started: float
    task: Any = None  # asyncio.Task[None], set right after creation
    stop_reason: str | None = None  # "shutdown" | "lost"
    # Its outcome is being recorded: no longer cancelled as lost (the outcome write itself
    # takes the job out of RUNNING, which the next heartbeat would report as lost) nor as
    # a shutdown (the write finishes, it is quick).
    finishing: bool = False
    usage: JobUsage = field(default_factory=JobUsage)

    @property
    def job_id(self) -> str:
        return self.claim.job_id


class OutcomeWorker(Protocol):
    """What recording a job's outcome needs from its worker (``finish``, ``recovery``). The
    worker provides it; those modules type against this and never import the worker."""

    name: str
    queue: Queue
    settings: Settings
    db: Database
    services: Services

    def rq_finished(self, run: Running, summary: dict[str, Any]) -> None: ...

    def rq_failed(self, run: Running, error: str) -> None: ...

    def rq_retry_at(self, run: Running, when: datetime) -> None: ...

    def rq_cancelled(self, run: Running) -> None: ...

    def rq_forget(self, run: Running) -> None: ...

    def register_death(self) -> None: ...


class RQOutcomes(BaseWorker):
    queue: Queue

    def rq_finished(self, run: Running, summary: dict[str, Any]) -> None:
        job = run.rq_job
        job.ended_at = now()
        job._result = summary
        self.handle_job_success(job, self.queue, self.queue.started_job_registry, run.execution)

    def rq_failed(self, run: Running, error: str) -> None:
        job = run.rq_job
        job.ended_at = now()
        self.handle_job_failure(job, self.queue, exc_string=error, execution=run.execution)

    def rq_retry_at(self, run: Running, when: datetime) -> None:
        """Park the job in RQ's scheduled registry until ``when`` (maintenance requeues it)."""
        job = run.rq_job
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=run.execution)
            job.set_status(RQStatus.SCHEDULED, pipeline=pipe)
            self.queue.schedule_job(job, when, pipeline=pipe)
            pipe.execute()

    def rq_requeue(self, run: Running) -> None:
        """Back to the front of the queue (a checkpointed job on shutdown)."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(run.rq_job, pipeline=pipe, execution=run.execution)
            pipe.execute()
        q.requeue_ids(self.queue, [run.job_id], at_front=True)

    def rq_cancelled(self, run: Running) -> None:
        job = run.rq_job
        registry = CanceledJobRegistry(self.queue.name, self.connection, serializer=q.SERIALIZER)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=run.execution)
            job.set_status(RQStatus.CANCELED, pipeline=pipe)
            registry.add(job, pipeline=pipe)
            pipe.execute()

    def rq_forget(self, run: Running) -> None:
        """Drop only this worker's execution (the job now belongs to someone else)."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(run.rq_job, pipeline=pipe, execution=run.execution)
            pipe.execute()

    def rq_refused(self, job: RQJob, refused: ClaimRefused, recheck_seconds: float) -> None:
        """A dequeued job the database would not hand over. Running elsewhere: look again
        after ``recheck_seconds`` (its worker may be dying). Finished or unknown: drop it."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(self.queue.intermediate_queue_key, 0, job.id)
            if refused.status == JobStatus.RUNNING.value:
                when = datetime.now(timezone.utc) + timedelta(seconds=recheck_seconds)
                job.set_status(RQStatus.SCHEDULED, pipeline=pipe)
                self.queue.schedule_job(job, when, pipeline=pipe)
            elif refused.status == JobStatus.CANCELLED.value:
                job.set_status(RQStatus.CANCELED, pipeline=pipe)
                CanceledJobRegistry(self.queue.name, self.connection, serializer=q.SERIALIZER).add(
                    job, pipeline=pipe
                )
            elif refused.status is None:
                pipe.delete(job.key)
            pipe.execute()
        log.info("job %s not started: it is %s", job.id, refused.status or "unknown")

    def rq_foreign(self, job: RQJob, error: str) -> None:
        """A job on a seedq queue that is not a seedq job: failed on the RQ side."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(self.queue.intermediate_queue_key, 0, job.id)
            job.set_status(RQStatus.FAILED, pipeline=pipe)
            job._handle_failure(error, pipeline=pipe, worker_name=self.name)
            pipe.execute()
        log.error("dropped RQ job %s: %s", job.id, error)
