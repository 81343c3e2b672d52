"""Reads behind ``seedq status``, ``seedq results`` and ``seedq workers``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from seedq.store.db import Database
from seedq.store.models import Batch, Job, JobStatus, Node, utcnow
from seedq.store.trees import stored_node

ERROR_STATUSES = (JobStatus.FAILED.value, JobStatus.CANCELLED.value, JobStatus.REJECTED.value)


@dataclass(frozen=True)
class BatchSummary:
    """Counts per status, plus throughput (completed jobs per second since the first start)
    and an ETA for what is left (None until something completed)."""

    batch_id: str
    created_at: datetime
    queue: str
    source: str | None
    counts: dict[str, int] = field(default_factory=dict)
    first_started: datetime | None = None
    last_finished: datetime | None = None
    engine_options: dict[str, Any] | None = None  # None: the workers' own engine
    tasks: tuple[str, ...] = ()  # the tasks of its jobs

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("running", 0)

    @property
    def done(self) -> bool:
        return self.remaining == 0

    @property
    def throughput(self) -> float | None:
        finished = self.counts.get("completed", 0) + self.counts.get("failed", 0)
        if not finished or self.first_started is None:
            return None
        end = self.last_finished if self.done and self.last_finished else utcnow()
        elapsed = (end - self.first_started).total_seconds()
        return finished / elapsed if elapsed > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.throughput
        if self.done:
            return 0.0
        return None if not rate else self.remaining / rate

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "created_at": self.created_at.isoformat() + "Z",
            "queue": self.queue,
            "source": self.source,
            "engine_options": self.engine_options,
            "counts": {s: self.counts.get(s, 0) for s in JobStatus.values()},
            "total": self.total,
            "done": self.done,
            "throughput_jobs_per_s": self.throughput,
            "eta_seconds": self.eta_seconds,
        }


def batch_exists(db: Database, batch_id: str) -> bool:
    with db.session() as s:
        return s.get(Batch, batch_id) is not None


def batch_queue(db: Database, batch_id: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(Batch.queue).where(Batch.id == batch_id))


def recent_batch_ids(db: Database, limit: int = 10) -> list[str]:
    with db.session() as s:
        stmt = select(Batch.id).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
        return list(s.scalars(stmt).all())


def summarize(db: Database, batch_ids: Sequence[str]) -> list[BatchSummary]:
    """One summary per batch id that exists, in the order given."""
    if not batch_ids:
        return []
    with db.session() as s:
        batches = {b.id: b for b in s.scalars(select(Batch).where(Batch.id.in_(batch_ids)))}
        counts = s.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id, Job.status)
        ).all()
        times = s.execute(
            select(Job.batch_id, func.min(Job.started_at), func.max(Job.finished_at))
            .where(Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id)
        ).all()
        task_rows = s.execute(
            select(Job.batch_id, Job.task).where(Job.batch_id.in_(batch_ids)).distinct()
        ).all()
    tasks: dict[str, set[str]] = {b: set() for b in batches}
    for batch_id, task in task_rows:
        if task:
            tasks[batch_id].add(task)
    per_batch: dict[str, dict[str, int]] = {b: {} for b in batches}
    for batch_id, status, n in counts:
        per_batch[batch_id][status] = int(n)
    spans = {row[0]: (row[1], row[2]) for row in times}
    out = []
    for bid in batch_ids:
        b = batches.get(bid)
        if b is None:
            continue
        first, last = spans.get(bid, (None, None))
        counts_of = per_batch[bid]
        out.append(
            BatchSummary(b.id, b.created_at, b.queue, b.source, counts_of, first, last, b.engine,
                         tuple(sorted(tasks[bid])))
        )
    return out


def iter_results(
    db: Database, batch_id: str, *, errors: bool, chunk: int = 500
) -> Iterator[dict[str, Any]]:
    """One JSON-able record per job, in line order: completed jobs with their tree, or (with
    ``errors``) failed, cancelled and rejected lines with their error."""
    wanted = ERROR_STATUSES if errors else (JobStatus.COMPLETED.value,)
    with db.session() as s:
        engine = s.scalar(select(Batch.engine).where(Batch.id == batch_id))
    last_line = -1
    while True:
        with db.session() as s:
            rows = s.scalars(
                select(Job)
                .where(Job.batch_id == batch_id, Job.status.in_(wanted), Job.line_no > last_line)
                .order_by(Job.line_no)
                .limit(chunk)
            ).all()
        if not rows:
            return
        for job in rows:
            yield _error_record(job) if errors else _result_record(job, engine)
        last_line = rows[-1].line_no


def _result_record(job: Job, engine_options: dict[str, Any] | None) -> dict[str, Any]:
    result = dict(job.result or {})
    return {
        "custom_id": job.custom_id,
        "job_id": job.id,
        "line": job.line_no,
        "status": job.status,
        "attempts": job.attempts,
        "retries": job.retries,
        "wall_seconds": job.wall_seconds,
        "engine_options": engine_options,
        **result,
    }


def _error_record(job: Job) -> dict[str, Any]:
    return {
        "custom_id": job.custom_id,
        "job_id": job.id,
        "line": job.line_no,
        "status": job.status,
        "error_kind": job.error_kind,
        "error": job.error,
        "attempts": job.attempts,
        "retries": job.retries,
    }


def tree_nodes(db: Database, job_id: str) -> list[dict[str, Any]]:
    """The stored nodes of one job, parents before children."""
    with db.session() as s:
        nodes = s.scalars(
            select(Node).where(Node.job_id == job_id).order_by(Node.depth, Node.node_id)
        ).all()
    return [{**stored_node(n), "attempt": n.attempt} for n in nodes]


def running_workers(db: Database) -> dict[str, tuple[list[str], datetime | None]]:
    """Every worker the database shows jobs running on: its queues and latest job heartbeat."""
    with db.session() as s:
        rows = s.execute(
            select(Job.worker, Batch.queue, func.max(Job.heartbeat_at))
            .join(Batch, Batch.id == Job.batch_id)
            .where(Job.status == JobStatus.RUNNING.value, Job.worker.is_not(None))
            .group_by(Job.worker, Batch.queue)
        ).all()
    out: dict[str, tuple[list[str], datetime | None]] = {}
    for worker, queue, beat in rows:
        queues, last = out.get(str(worker), ([], None))
        latest = max((b for b in (last, beat) if b is not None), default=None)
        out[str(worker)] = (sorted({*queues, queue}), latest)
    return out


def running_jobs(db: Database, workers: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """For each worker name, the jobs the database says it is running."""
    if not workers:
        return {}
    with db.session() as s:
        rows = s.execute(
            select(Job.worker, Job.id, Job.custom_id, Job.batch_id, Job.started_at, Job.attempts)
            .where(Job.worker.in_(workers), Job.status == JobStatus.RUNNING.value)
            .order_by(Job.started_at)
        ).all()
    out: dict[str, list[dict[str, Any]]] = {w: [] for w in workers}
    for r in rows:
        out[r.worker].append(
            {
                "job_id": r.id,
                "custom_id": r.custom_id,
                "batch_id": r.batch_id,
                "started_at": r.started_at.isoformat() + "Z" if r.started_at else None,
                "attempt": r.attempts,
            }
        )
    return out
