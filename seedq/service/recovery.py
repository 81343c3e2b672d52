"""Keeping jobs where they belong when a worker cannot run them, and putting them back in
order: jobs of another SQL store, jobs claimed during a database outage, jobs checkpointed
at shutdown, and jobs left by dead workers when a burst worker is about to exit.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from seedq import queue as q
from seedq.service.context import Services
from seedq.service.outcomes import OutcomeWorker, Running
from seedq.settings import Settings
from seedq.store import repo
from seedq.store.models import utcnow
from seedq.store.stale import count_lapsed, first_lapsed

log = logging.getLogger(__name__)
MIN_MAINTENANCE_DELAY = 0.25


class ForeignStoreJob(RuntimeError):
    """The job at the front of the queue belongs to another SQL store (it was put back)."""


def heartbeat_lapse_seconds(settings: Settings) -> float:
    """Silence after which a worker counts as dead for display and for a burst worker's
    last look (one missed heartbeat and a second of slack); jobs are only taken from it
    after ``heartbeat_ttl``."""
    return min(float(settings.heartbeat_ttl), 2 * settings.heartbeat_seconds + 1.0)


def maintenance_delay(services: Services, queue_name: str) -> float:
    """Seconds until the next maintenance: ``maintenance_seconds``, or less when a job whose
    worker missed heartbeats turns stale sooner (its jobs are then requeued right away)."""
    s = services.settings
    now = utcnow()
    try:
        lapse = timedelta(seconds=heartbeat_lapse_seconds(s))
        first = first_lapsed(services.db, queue_name, now - lapse)
    except Exception:  # the database is away: the next maintenance will say more
        return s.maintenance_seconds
    if first is None:
        return s.maintenance_seconds
    stale_in = (first + timedelta(seconds=s.heartbeat_ttl) - now).total_seconds() + 0.05
    return min(s.maintenance_seconds, max(MIN_MAINTENANCE_DELAY, stale_in))


class StoreGuard:
    """Decides whether a payload is for this worker's store; warns once per foreign store."""

    def __init__(self, store_id: str, worker_name: str) -> None:
        self.store_id = store_id
        self.worker_name = worker_name
        self.warned: set[str] = set()

    def accepts(self, payload: q.JobPayload) -> bool:
        store = payload["store"]
        if store is None or store == self.store_id:  # None: enqueued before store ids
            return True
        if store not in self.warned:
            self.warned.add(store)
            log.warning(
                "worker %s: job %s belongs to SQL store %s, but this worker is connected to "
                "store %s; leaving it on the queue (use one store per queue)",
                self.worker_name,
                payload["job_id"],
                store,
                self.store_id,
            )
        return False


def checkpoint(worker: OutcomeWorker, runs: list[Running]) -> None:
    """Give back the trees stopped at shutdown: Redis first (all at once, at the front of the
    queue, in the order they were claimed), then the database (attempt refunded)."""
    if not runs:
        return
    runs = sorted(runs, key=lambda r: r.started)
    for run in runs:
        worker.rq_forget(run)  # its execution ends; the RQ job itself goes back
    q.requeue_ids(
        worker.queue,
        [r.job_id for r in runs],
        at_front=True,
        job_timeout=worker.settings.job_timeout,
        result_ttl=worker.settings.result_ttl,
        store=worker.services.store_id,
    )
    for run in runs:
        repo.release_job(
            worker.db,
            run.job_id,
            worker.name,
            run.claim.attempt,
            note="checkpointed at worker shutdown",
            kind="shutdown",
            refund_attempt=True,
        )
        log.warning("worker %s: checkpointed %s back to the queue", worker.name, run.job_id)


async def abandoned_left(worker: OutcomeWorker) -> bool:
    """Whether jobs of the queue run on workers that missed a heartbeat (a burst worker waits
    for them to be recovered before it exits)."""
    before = utcnow() - timedelta(seconds=heartbeat_lapse_seconds(worker.settings))
    return await asyncio.to_thread(count_lapsed, worker.db, worker.queue.name, before) > 0
