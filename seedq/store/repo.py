"""Writes: batches and their jobs, claims, heartbeats, nodes and generations, job outcomes.

Every state change of a running job is guarded by ``worker`` and ``attempts`` so that a worker
that lost a job (cancelled, or declared dead and re-run elsewhere) can no longer write its
outcome; nodes and generations are upserted by their deterministic keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from seedq.store.db import Database
from seedq.store.models import Batch, Generation, Job, JobStatus, Node, utcnow
from seedq.store.rows import (
    Claimed,
    ClaimRefused,
    GenerationRow,
    NewJob,
    NodeRow,
    Rejection,
    RetryTarget,
    scrub,
)

QUEUED = JobStatus.QUEUED.value
RUNNING = JobStatus.RUNNING.value
RAW_LINE_LIMIT = 2000


def create_batch(
    db: Database,
    *,
    batch_id: str,
    source: str | None,
    task: str | None,
    queue: str,
    options: dict[str, Any],
    jobs: Sequence[NewJob],
    rejected: Sequence[Rejection] = (),
    engine: dict[str, Any] | None = None,
) -> None:
    """Store a batch (engine options too), its queued jobs and rejected lines in one go."""
    now = utcnow()
    with db.session() as s:
        s.add(
            Batch(
                id=batch_id,
                created_at=now,
                source=source,
                task=task,
                queue=queue,
                total=len(jobs),
                rejected=len(rejected),
                options=options,
                engine=engine,
            )
        )
        s.flush()
        rows = [_job_row(batch_id, j, now) for j in jobs]
        rows += [_rejected_row(batch_id, r, now) for r in rejected]
        if rows:
            s.execute(insert(Job), rows)


def _job_row(batch_id: str, job: NewJob, now: datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "batch_id": batch_id,
        "line_no": job.line_no,
        "custom_id": job.custom_id,
        "task": job.task,
        "status": QUEUED,
        "attempts": 0,
        "payload": job.payload,
        "created_at": now,
    }


def _rejected_row(batch_id: str, rej: Rejection, now: datetime) -> dict[str, Any]:
    return {
        "id": f"{batch_id}-r{rej.line_no:06d}",
        "batch_id": batch_id,
        "line_no": rej.line_no,
        "custom_id": rej.custom_id,
        "task": None,
        "status": JobStatus.REJECTED.value,
        "attempts": 0,
        "error": rej.message(),
        "error_kind": "input",
        "payload": {"raw": rej.raw[:RAW_LINE_LIMIT], "field": rej.field},
        "created_at": now,
        "finished_at": now,
    }


def claim_job(
    db: Database, job_id: str, worker: str, stale_before: datetime
) -> Claimed | ClaimRefused:
    """Take ``job_id`` if it is queued, or running on a worker that stopped heartbeating."""
    now = utcnow()
    claimable = or_(
        Job.status == QUEUED,
        and_(
            Job.status == RUNNING, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)
        ),
    )
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, claimable)
            .values(
                status=RUNNING,
                worker=worker,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                retry_at=None,
            )
        )
        row = s.execute(
            select(Job.batch_id, Job.attempts, Job.attempt_base, Job.payload, Job.status)
            .add_columns(Batch.engine)
            .join(Job.batch)
            .where(Job.id == job_id)
        ).one_or_none()
    if row is None:
        return ClaimRefused(job_id, None)
    if done.rowcount != 1:  # type: ignore[attr-defined]
        return ClaimRefused(job_id, row.status)
    payload = dict(row.payload)
    return Claimed(job_id, row.batch_id, row.attempts, payload, row.engine, row.attempt_base)


def heartbeat(db: Database, job_ids: Iterable[str], worker: str) -> set[str]:
    """Refresh the heartbeat of the jobs ``worker`` runs; returns those it no longer owns
    (cancelled, or taken over by another worker)."""
    ids = list(job_ids)
    if not ids:
        return set()
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == RUNNING, Job.worker == worker)
            .values(heartbeat_at=utcnow())
        )
        owned = s.scalars(
            select(Job.id).where(Job.id.in_(ids), Job.status == RUNNING, Job.worker == worker)
        ).all()
    return set(ids) - set(owned)


def _upsert(s: Session, model: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    dialect = s.get_bind().dialect.name
    ins = pg_insert(model) if dialect == "postgresql" else sqlite_insert(model)
    stmt = ins.values(rows)
    updates = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    s.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates))


def record_node(
    db: Database,
    job_id: str,
    attempt: int,
    node: NodeRow,
    generations: Sequence[GenerationRow] = (),
) -> None:
    """Insert or update one node and its generations (idempotent by their keys). Texts are
    scrubbed of NUL characters (see ``rows.scrub``)."""
    now = utcnow()
    node_row: dict[str, Any] = {
        **scrub(node), "job_id": job_id, "attempt": attempt, "created_at": now
    }
    gen_rows: list[dict[str, Any]] = [
        {**g, "job_id": job_id, "attempt": attempt, "created_at": now} for g in generations
    ]
    with db.session() as s:
        _upsert(s, Node, [node_row], ["job_id", "node_id"])
        _upsert(s, Generation, gen_rows, ["job_id", "gen_key"])


def _owned(job_id: str, worker: str, attempt: int) -> Any:
    return and_(
        Job.id == job_id, Job.status == RUNNING, Job.worker == worker, Job.attempts == attempt
    )


def complete_job(
    db: Database,
    job_id: str,
    worker: str,
    attempt: int,
    *,
    result: dict[str, Any],
    answer: str | None,
    correct: bool | None,
    wall_seconds: float,
) -> bool:
    """Mark the job completed and drop nodes/generations left by earlier, different attempts
    (and generation rows of schema revision 0001, which summed several sequences)."""
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(_owned(job_id, worker, attempt))
            .values(
                status=JobStatus.COMPLETED.value,
                result=scrub(result),
                answer=scrub(answer),
                correct=correct,
                wall_seconds=wall_seconds,
                finished_at=utcnow(),
                error=None,
                error_kind=None,
            )
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return False
        s.execute(delete(Node).where(Node.job_id == job_id, Node.attempt != attempt))
        s.execute(
            delete(Generation).where(
                Generation.job_id == job_id,
                or_(Generation.attempt != attempt, Generation.group_key.is_(None)),
            )
        )
    return True


def fail_job(
    db: Database, job_id: str, worker: str, attempt: int, *, error: str, kind: str
) -> bool:
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(_owned(job_id, worker, attempt))
            .values(
                status=JobStatus.FAILED.value,
                error=scrub(error),
                error_kind=kind,
                finished_at=utcnow(),
            )
        )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def release_job(
    db: Database,
    job_id: str,
    worker: str,
    attempt: int,
    *,
    note: str | None = None,
    kind: str | None = None,
    retry_at: datetime | None = None,
    refund_attempt: bool = False,
) -> bool:
    """Put a running job back to queued (checkpoint on shutdown, or a retry after a transient
    fault). Nodes already written stay: the re-run upserts them by key."""
    values: dict[str, Any] = {"status": QUEUED, "worker": None, "retry_at": retry_at}
    if note is not None:
        values.update(error=note, error_kind=kind)
    if refund_attempt:
        values["attempts"] = Job.attempts - 1
    with db.session() as s:
        done = s.execute(update(Job).where(_owned(job_id, worker, attempt)).values(**values))
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def cancel_batch(db: Database, batch_id: str) -> int:
    """Cancel every queued or running job of the batch; returns how many changed."""
    now = utcnow()
    with db.session() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=now))
        done = s.execute(
            update(Job)
            .where(Job.batch_id == batch_id, Job.status.in_((QUEUED, RUNNING)))
            .values(status=JobStatus.CANCELLED.value, finished_at=now)
        )
    return int(done.rowcount)  # type: ignore[attr-defined]


def reset_for_retry(
    db: Database, *, batch_id: str | None = None, job_id: str | None = None
) -> list[RetryTarget]:
    """Turn failed or cancelled jobs back into queued ones. ``attempts`` keeps counting (the
    history stays); the attempt budget starts over from ``attempt_base``."""
    if (batch_id is None) == (job_id is None):
        raise ValueError("give exactly one of batch_id or job_id")
    scope = Job.batch_id == batch_id if batch_id is not None else Job.id == job_id
    retryable = Job.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value))
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.batch_id, Batch.queue)
            .join(Batch, Batch.id == Job.batch_id)
            .where(scope, retryable)
            .order_by(Job.line_no)
        ).all()
        ids = [r.id for r in rows]
        for chunk in _chunks(ids, 500):
            s.execute(
                update(Job)
                .where(Job.id.in_(chunk), retryable)
                .values(
                    status=QUEUED,
                    attempt_base=Job.attempts,
                    retries=Job.retries + 1,
                    error=None,
                    error_kind=None,
                    worker=None,
                    finished_at=None,
                    retry_at=None,
                )
            )
        if batch_id is not None:
            s.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=None))
    return [RetryTarget(r.id, r.batch_id, r.queue) for r in rows]


def delete_batch(db: Database, batch_id: str) -> None:
    """Remove a batch and everything under it (used when its enqueue failed)."""
    with db.session() as s:
        job_ids = select(Job.id).where(Job.batch_id == batch_id)
        s.execute(delete(Generation).where(Generation.job_id.in_(job_ids)))
        s.execute(delete(Node).where(Node.job_id.in_(job_ids)))
        s.execute(delete(Job).where(Job.batch_id == batch_id))
        s.execute(delete(Batch).where(Batch.id == batch_id))


def queued_job_ids(
    db: Database, queue: str, *, created_before: datetime, limit: int = 1000
) -> list[str]:
    """Queued jobs of ``queue`` older than ``created_before``, oldest line first."""
    with db.session() as s:
        rows = s.scalars(
            select(Job.id)
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.queue == queue, Job.status == QUEUED, Job.created_at < created_before)
            .order_by(Job.created_at, Job.line_no)
            .limit(limit)
        ).all()
    return list(rows)


def job_status(db: Database, job_id: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
