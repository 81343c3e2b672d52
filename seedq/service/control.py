"""Operations on batches and workers: cancel, retry, list live workers, queue depth."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rq.worker import Worker

from seedq import queue as q
from seedq.service.context import Services
from seedq.service.recovery import heartbeat_lapse_seconds
from seedq.store import repo, reports

log = logging.getLogger(__name__)


class ControlError(ValueError):
    """The operation does not apply (unknown batch, nothing to retry, ...)."""


def cancel_batch(services: Services, batch_id: str) -> int:
    """Cancel the queued and running jobs of a batch: the database first, then its waiting
    entries leave Redis in bulk (queue list, retry schedule, RQ records). Running ones are
    stopped by their worker at its next heartbeat."""
    queue_name = reports.batch_queue(services.db, batch_id)
    if queue_name is None:
        raise ControlError(f"no batch {batch_id!r}")
    n = repo.cancel_batch(services.db, batch_id)
    removed = q.remove_batch(services.queue(queue_name), batch_id)
    log.info("batch %s: %d job(s) cancelled, %d removed from Redis", batch_id, n, len(removed))
    return n


def retry(services: Services, *, batch_id: str | None = None, job_id: str | None = None) -> int:
    """Queue the failed and cancelled jobs of a batch (or one job) again; their attempts are
    kept (``retries`` counts the retries, the attempt budget starts over)."""
    if batch_id is not None and not reports.batch_exists(services.db, batch_id):
        raise ControlError(f"no batch {batch_id!r}")
    targets = repo.reset_for_retry(services.db, batch_id=batch_id, job_id=job_id)
    if not targets:
        what = f"batch {batch_id}" if batch_id else f"job {job_id}"
        raise ControlError(f"{what}: no failed or cancelled job to retry")
    by_queue: dict[str, list[q.JobPayload]] = defaultdict(list)
    for t in targets:
        by_queue[t.queue].append(q.make_payload(t.job_id, t.batch_id, services.store_id))
    s = services.settings
    for name, payloads in by_queue.items():
        q.reenqueue(
            services.queue(name), payloads, job_timeout=s.job_timeout, result_ttl=s.result_ttl
        )
    return len(targets)


@dataclass
class WorkerInfo:
    name: str
    queues: list[str]
    state: str
    hostname: str | None
    pid: int | None
    last_heartbeat: datetime | None
    alive: bool
    successful: int = 0
    failed: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        beat = self.last_heartbeat.isoformat() if self.last_heartbeat else None
        return {
            "name": self.name,
            "queues": self.queues,
            "state": self.state,
            "hostname": self.hostname,
            "pid": self.pid,
            "last_heartbeat": beat,
            "alive": self.alive,
            "successful_jobs": self.successful,
            "failed_jobs": self.failed,
            "jobs": self.jobs,
        }


def list_workers(services: Services, *, include_dead: bool = False) -> list[WorkerInfo]:
    """Workers registered in Redis, with the jobs the database says each is running. A
    worker is alive until its heartbeat lapses (``recovery.heartbeat_lapse_seconds``); with
    ``include_dead``, dead ones are listed too, also those whose Redis record expired while
    the database still shows jobs running on them."""
    now = datetime.now(timezone.utc)
    lapse = heartbeat_lapse_seconds(services.settings)
    out = []
    for w in Worker.all(connection=services.redis, serializer=q.SERIALIZER):
        beat = w.last_heartbeat
        alive = beat is not None and (now - beat).total_seconds() < lapse and w.death_date is None
        if not alive and not include_dead:
            continue
        out.append(
            WorkerInfo(
                w.name,
                w.queue_names(),
                str(w.get_state()) if alive else "dead",
                w.hostname,
                w.pid,
                beat,
                alive,
                w.successful_job_count,
                w.failed_job_count,
            )
        )
    if include_dead:
        out += _gone_workers(services, {w.name for w in out})
    jobs = reports.running_jobs(services.db, [w.name for w in out])
    for info in out:
        info.jobs = jobs.get(info.name, [])
    return sorted(out, key=lambda i: i.name)


def _gone_workers(services: Services, known: set[str]) -> list[WorkerInfo]:
    """Workers Redis no longer knows (their record expired) that jobs still run on."""
    out = []
    for name, (queues, beat) in reports.running_workers(services.db).items():
        if name in known:
            continue
        host, _, rest = name.partition(".")
        pid = rest.split(".", 1)[0]
        last = beat.replace(tzinfo=timezone.utc) if beat is not None else None
        pid_no = int(pid) if pid.isdigit() else None
        out.append(WorkerInfo(name, queues, "dead", host or None, pid_no, last, False))
    return out
