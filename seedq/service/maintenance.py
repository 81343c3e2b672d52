"""Keeping every job recoverable: what any worker does every ``maintenance_seconds``.

Under a short Redis lock (one worker per queue at a time):

1. jobs the database says are running on a worker that stopped heartbeating are put back
   on the queue (Redis first, then the database) or failed when out of attempts;
2. RQ executions that expired are reconciled with the database (finished jobs are cleared,
   queued ones are put back on the queue);
3. retries whose backoff has passed move from RQ's scheduled registry to the queue;
4. job ids stuck in the intermediate list (a worker died between claim and start) go back;
5. queued jobs of the database that Redis does not hold are enqueued again: at once when
   Redis lost its data (its marker key is gone), else when Redis holds nothing for the
   queue and the jobs are older than ``ORPHAN_AGE_SECONDS``;
6. RQ's finished/failed registries and worker registry are trimmed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.utils import current_timestamp
from rq.worker_registration import clean_worker_registry

from seedq import queue as q
from seedq.service.context import Services
from seedq.store import repo
from seedq.store.models import FINAL_STATUSES, JobStatus, utcnow
from seedq.store.stale import find_stale, recover_stale

log = logging.getLogger(__name__)
ORPHAN_AGE_SECONDS = 60
SUBMIT_MARGIN_SECONDS = 10  # a batch younger than this may still be being enqueued
ORPHAN_LIMIT = 100_000


@dataclass
class MaintenanceReport:
    ran: bool = False
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    due: list[str] = field(default_factory=list)
    unstuck: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


class Maintenance:
    def __init__(self, services: Services, queue: Queue, worker_name: str) -> None:
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self.queue = queue
        self.worker_name = worker_name

    def run(self) -> MaintenanceReport:
        report = MaintenanceReport()
        key = q.maintenance_lock_key(self.queue.name)
        lock_ttl = max(5, int(self.settings.maintenance_seconds * 2) + 1)
        conn = self.queue.connection
        if not conn.set(key, self.worker_name, nx=True, ex=lock_ttl):
            return report
        try:
            report.ran = True
            self.recover_stale_jobs(report)
            self.reconcile_expired_executions()
            report.due = q.enqueue_due(self.queue)
            self.unstick_intermediate(report)
            self.requeue_orphans(report)
            self.trim_registries()
        finally:
            if conn.get(key) == self.worker_name.encode():
                conn.delete(key)
        if report.requeued or report.failed or report.unstuck or report.orphans:
            log.warning(
                "maintenance of %s: requeued %s, failed %s, unstuck %s, orphans %s",
                self.queue.name,
                report.requeued,
                report.failed,
                report.unstuck,
                report.orphans,
            )
        return report

    def _requeue(self, job_ids: list[str], *, at_front: bool) -> None:
        s = self.settings
        q.requeue_ids(
            self.queue,
            job_ids,
            at_front=at_front,
            job_timeout=s.job_timeout,
            result_ttl=s.result_ttl,
            store=self.services.store_id,
        )

    def stale_before(self) -> timedelta:
        return timedelta(seconds=self.settings.heartbeat_ttl)

    def recover_stale_jobs(self, report: MaintenanceReport) -> None:
        """Redis first (all retried jobs at once, at the front, in the order they were
        started), then the database, job by job."""
        cutoff = utcnow() - self.stale_before()
        stale = find_stale(self.db, self.queue.name, cutoff)
        retry = [j.job_id for j in stale if j.budget_used < self.settings.max_attempts]
        if retry:
            self._drop_executions(retry)
            self._requeue(retry, at_front=True)
        for job in stale:
            status = recover_stale(self.db, job, cutoff, self.settings.max_attempts)
            if status == JobStatus.QUEUED.value:
                report.requeued.append(job.job_id)
            elif status == JobStatus.FAILED.value:
                self._drop_executions([job.job_id])
                self._mark_rq(job.job_id, RQStatus.FAILED)
                report.failed.append(job.job_id)

    def _drop_executions(self, job_ids: list[str]) -> None:
        """Remove the RQ executions of ``job_ids`` from the started registry."""
        registry = self.queue.started_job_registry
        wanted = set(job_ids)
        entries = [
            f"{job_id}:{execution_id}"
            for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False)
            if job_id in wanted
        ]
        if entries:
            self.queue.connection.zrem(registry.key, *entries)

    def _mark_rq(self, job_id: str, status: RQStatus) -> None:
        conn = self.queue.connection
        if not conn.exists(RQJob.key_for(job_id)):
            return
        with conn.pipeline() as pipe:
            pipe.hset(RQJob.key_for(job_id), "status", status.value)
            if status == RQStatus.FAILED:
                registry = FailedJobRegistry(self.queue.name, conn, serializer=q.SERIALIZER)
                pipe.zadd(registry.key, {job_id: current_timestamp() + 86400 * 7})
            pipe.execute()

    def reconcile_expired_executions(self) -> None:
        registry = self.queue.started_job_registry
        now = current_timestamp()
        expired = registry.connection.zrangebyscore(registry.key, 0, now)
        if not expired:
            return
        requeue = []
        for entry in expired:
            job_id = registry.parse_job_id(entry)
            status = repo.job_status(self.db, job_id)
            # a running job is left to its database heartbeat (recover_stale_jobs)
            if status == JobStatus.QUEUED.value:
                requeue.append(job_id)
            elif status is None and not self._ours(job_id):
                continue  # another store's job: its own workers reconcile it
            elif status in FINAL_STATUSES or status is None:
                self._mark_rq(job_id, _rq_status(status))
            registry.connection.zrem(registry.key, entry)
        self._requeue(requeue, at_front=True)

    def unstick_intermediate(self, report: MaintenanceReport) -> None:
        inter = IntermediateQueue(self.queue.key, self.queue.connection)
        started = {
            j for j, _ in self.queue.started_job_registry.get_job_and_execution_ids(cleanup=False)
        }
        for job_id in inter.get_job_ids():
            if job_id in started or inter.set_first_seen(job_id):
                continue
            if not inter.should_be_cleaned_up(job_id):
                continue
            status = repo.job_status(self.db, job_id)
            if status == JobStatus.QUEUED.value:
                self._requeue([job_id], at_front=True)
                report.unstuck.append(job_id)
            elif status != JobStatus.RUNNING.value and (status is not None or self._ours(job_id)):
                inter.remove(job_id)

    def _ours(self, job_id: str) -> bool:
        """Whether an RQ job names this SQL store (or none: an older payload, or no record)."""
        try:
            job = RQJob.fetch(job_id, connection=self.queue.connection, serializer=q.SERIALIZER)
            store = q.payload_of(job)["store"]
        except Exception:
            return True
        return store is None or store == self.services.store_id

    def requeue_orphans(self, report: MaintenanceReport) -> None:
        orphans = self.lost_by_redis()
        if not orphans and q.pending_count(self.queue) == 0:
            older = utcnow() - timedelta(seconds=ORPHAN_AGE_SECONDS)
            orphans = repo.queued_job_ids(self.db, self.queue.name, created_before=older)
        if orphans:
            self._requeue(orphans, at_front=False)
            report.orphans.extend(orphans)

    def lost_by_redis(self) -> list[str]:
        """When Redis lost its data (its marker key is gone): the queued jobs it lost."""
        conn, marker = self.queue.connection, q.redis_marker_key(self.queue.name)
        if conn.exists(marker):
            return []
        margin = min(SUBMIT_MARGIN_SECONDS, ORPHAN_AGE_SECONDS)
        older = utcnow() - timedelta(seconds=margin)
        queued = repo.queued_job_ids(
            self.db, self.queue.name, created_before=older, limit=ORPHAN_LIMIT
        )
        if len(queued) < ORPHAN_LIMIT:  # all seen: the next runs need not look
            conn.set(marker, self.worker_name)
        return q.missing_ids(self.queue, queued) if queued else []

    def trim_registries(self) -> None:
        conn, name = self.queue.connection, self.queue.name
        FinishedJobRegistry(name, conn, serializer=q.SERIALIZER).cleanup()
        FailedJobRegistry(name, conn, serializer=q.SERIALIZER).cleanup()
        clean_worker_registry(self.queue)


def _rq_status(db_status: str | None) -> RQStatus:
    if db_status == JobStatus.COMPLETED.value:
        return RQStatus.FINISHED
    if db_status == JobStatus.CANCELLED.value:
        return RQStatus.CANCELED
    return RQStatus.FAILED
