"""Jobs whose worker stopped heartbeating: finding, counting and recovering them (for
:mod:`seedq.service.maintenance` and :mod:`seedq.service.recovery`).

A job whose worker missed a heartbeat is *lapsed*; once its last heartbeat is older than the
caller's cutoff (the heartbeat TTL) it is *stale*, and :func:`recover_stale` queues it again,
or fails it when it has no attempts left.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from seedq.store.db import Database
from seedq.store.models import Batch, Job, JobStatus, utcnow
from seedq.store.repo import QUEUED, RUNNING
from seedq.store.rows import StaleJob


def find_stale(
    db: Database, queue: str, stale_before: datetime, limit: int = 500
) -> list[StaleJob]:
    """Running jobs of ``queue`` whose worker stopped heartbeating before ``stale_before``."""
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.attempts, Job.worker, Job.attempt_base)
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.queue == queue, Job.status == RUNNING, Job.heartbeat_at < stale_before)
            .order_by(Job.started_at, Job.id)
            .limit(limit)
        ).all()
    return [StaleJob(r.id, r.attempts, r.worker, r.attempt_base) for r in rows]


def first_lapsed(db: Database, queue: str, lapsed_before: datetime) -> datetime | None:
    """The oldest heartbeat among running jobs of ``queue`` whose worker missed one."""
    with db.session() as s:
        return s.scalar(
            select(func.min(Job.heartbeat_at))
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.queue == queue, Job.status == RUNNING, Job.heartbeat_at < lapsed_before)
        )


def count_lapsed(db: Database, queue: str, lapsed_before: datetime) -> int:
    """Running jobs of ``queue`` whose worker missed a heartbeat (last one before
    ``lapsed_before``): soon abandoned, unless their worker comes back."""
    with db.session() as s:
        n = s.scalar(
            select(func.count())
            .select_from(Job)
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.queue == queue, Job.status == RUNNING, Job.heartbeat_at < lapsed_before)
        )
    return int(n or 0)


def recover_stale(
    db: Database, job: StaleJob, stale_before: datetime, max_attempts: int
) -> str | None:
    """Requeue (or fail, when out of attempts) a job whose worker died; returns its new status,
    or None when it is no longer stale (its worker came back, or someone else recovered it)."""
    lost = f"worker {job.worker} stopped heartbeating (attempt {job.attempts})"
    if job.budget_used >= max_attempts:
        values: dict[str, Any] = {
            "status": JobStatus.FAILED.value,
            "error": f"{lost}; no attempts left ({max_attempts})",
            "error_kind": "lost",
            "finished_at": utcnow(),
        }
    else:
        values = {"status": QUEUED, "worker": None, "error": lost, "error_kind": "lost"}
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(
                Job.id == job.job_id,
                Job.status == RUNNING,
                Job.attempts == job.attempts,
                Job.heartbeat_at < stale_before,
            )
            .values(**values)
        )
    return str(values["status"]) if done.rowcount == 1 else None  # type: ignore[attr-defined]
