"""Aggregates behind ``seedq report``: batch overview, latency per depth and role,
acceptance per role and draft position, tokens/s and target busy fraction per tree, and the
comparison of batches on the same custom_ids (the SeeD paper's table).

Every query is plain SQL that runs the same on SQLite and PostgreSQL; the arithmetic that
combines rows is done here in Python.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, case, func, select

from seedq.store.db import Database
from seedq.store.models import Batch, Generation, Job, JobStatus

COMPLETED = JobStatus.COMPLETED.value
FINISHED = (COMPLETED, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
ALL_TASKS = "all"


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Models:
    """What served a job (``jobs.result["models"]``, see ``seedq.service.usage``)."""

    target: str | None
    draft: str | None
    engine: str | None
    device: str | None
    dtype: str | None
    generator: str | None

    @classmethod
    def of(cls, record: Any) -> Models | None:
        if not isinstance(record, dict):
            return None
        return cls(*(_text(record.get(k)) for k in
                     ("target", "draft", "engine", "device", "dtype", "generator")))

    @property
    def label(self) -> str:
        """``target tiny, draft tiny-draft (seed, cpu float32)`` (``no draft`` for engines
        without one); a generator without models (a test double) by its name."""
        if self.target is None:
            return f"{self.generator or '?'} ({self.engine or '?'}, no models)"
        place = " ".join(p for p in (self.device, self.dtype) if p)
        details = ", ".join(p for p in (self.engine, place) if p)
        draft = f"draft {self.draft}" if self.draft else "no draft"
        return f"target {self.target}, {draft}" + (f" ({details})" if details else "")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class BatchOverview:
    """One batch at a glance. ``engine_options``: what the batch asked for (None: the
    workers' own engine); ``engines``: the engines that actually generated its sequences;
    ``models``: the models that served its completed jobs (as recorded in ``jobs.result``;
    empty for jobs completed before models were recorded)."""

    batch_id: str
    created_at: datetime
    source: str | None
    task: str | None
    tasks: tuple[str, ...]
    engine_options: dict[str, Any] | None
    engines: tuple[str, ...]
    workers: tuple[str, ...]
    models: tuple[Models, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    correct: int = 0
    graded: int = 0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    span_seconds: float | None = None  # first start to last finish

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def success_rate(self) -> float | None:
        """Completed jobs over finished ones (completed, failed, cancelled)."""
        finished = sum(self.counts.get(s, 0) for s in FINISHED)
        return _ratio(self.counts.get(COMPLETED, 0), finished)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.correct, self.graded)

    @property
    def acceptance(self) -> float | None:
        return _ratio(self.accepted_tokens, self.drafted_tokens)

    @property
    def tokens_per_second(self) -> float | None:
        """Generated tokens over the batch's wall span (trees overlap within a worker)."""
        return _ratio(self.new_tokens, self.span_seconds or 0.0)


def overview(db: Database, batch_id: str) -> BatchOverview | None:
    with db.session() as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            return None
        of_batch = Job.batch_id == batch_id
        counts = {str(status): int(n) for status, n in s.execute(
            select(Job.status, func.count()).where(of_batch).group_by(Job.status)
        )}
        tasks = s.scalars(select(Job.task).where(of_batch, Job.task.is_not(None)).distinct())
        workers = s.scalars(
            select(Job.worker).where(of_batch, Job.worker.is_not(None)).distinct()
        )
        graded = s.execute(
            select(func.count(Job.correct), func.sum(_as_int(Job.correct)),
                   func.min(Job.started_at), func.max(Job.finished_at)).where(of_batch)
        ).one()
        gens = s.execute(
            select(func.sum(Generation.new_tokens), func.sum(Generation.drafted_tokens),
                   func.sum(Generation.accepted_tokens))
            .join(Job, Job.id == Generation.job_id).where(of_batch)
        ).one()
        engines = s.scalars(
            select(Generation.engine).join(Job, Job.id == Generation.job_id)
            .where(of_batch, Generation.engine.is_not(None)).distinct()
        )
        models = _models(s.scalars(_models_of(batch_id)))
        span = (graded[3] - graded[2]).total_seconds() if graded[2] and graded[3] else None
        return BatchOverview(
            batch_id=batch.id, created_at=batch.created_at, source=batch.source,
            task=batch.task, tasks=tuple(sorted(t for t in tasks if t)),
            engine_options=batch.engine,
            engines=tuple(sorted(e for e in engines if e)),
            workers=tuple(sorted(w for w in workers if w)),
            models=models,
            counts=counts,
            correct=int(graded[1] or 0), graded=int(graded[0] or 0),
            new_tokens=int(gens[0] or 0), drafted_tokens=int(gens[1] or 0),
            accepted_tokens=int(gens[2] or 0), span_seconds=span,
        )


def batch_models(db: Database, batch_id: str) -> tuple[Models, ...]:
    """The distinct models that served the batch's completed jobs (``seedq show``)."""
    with db.session() as s:
        return _models(s.scalars(_models_of(batch_id)))


def _models_of(batch_id: str) -> Any:
    return select(Job.result["models"]).where(
        Job.batch_id == batch_id, Job.status == COMPLETED
    ).distinct()


def _models(records: Any) -> tuple[Models, ...]:
    found = {m for m in map(Models.of, records) if m is not None}
    return tuple(sorted(found, key=lambda m: m.label))


def _as_int(column: Any) -> Any:
    return case((column.is_(True), 1), else_=0).cast(Integer)


@dataclass(frozen=True)
class LatencyRow:
    batch_id: str
    depth: int
    role: str
    generations: int
    avg_seconds: float
    max_seconds: float


def latency(db: Database, batch_ids: Sequence[str]) -> list[LatencyRow]:
    """Seconds per generated sequence, by batch, depth and role."""
    with db.session() as s:
        rows = s.execute(
            select(Job.batch_id, Generation.depth, Generation.role, func.count(),
                   func.avg(Generation.wall_seconds), func.max(Generation.wall_seconds))
            .join(Job, Job.id == Generation.job_id)
            .where(Job.batch_id.in_(batch_ids), Generation.depth.is_not(None))
            .group_by(Job.batch_id, Generation.depth, Generation.role)
            .order_by(Job.batch_id, Generation.depth, Generation.role)
        ).all()
    return [LatencyRow(r[0], int(r[1]), str(r[2] or "?"), int(r[3]), float(r[4] or 0.0),
                       float(r[5] or 0.0)) for r in rows]


@dataclass(frozen=True)
class AcceptanceRow:
    """Accepted over drafted tokens by role and draft position: the sequence's place in its
    group (``seq_index``: which of the N sibling drafters, in SeeD, drafted it). Per-token
    positions inside one draft are not stored."""

    batch_id: str
    role: str
    position: int
    drafted: int
    accepted: int

    @property
    def acceptance(self) -> float | None:
        return _ratio(self.accepted, self.drafted)


def acceptance(db: Database, batch_ids: Sequence[str]) -> list[AcceptanceRow]:
    with db.session() as s:
        rows = s.execute(
            select(Job.batch_id, Generation.role, Generation.seq_index,
                   func.sum(Generation.drafted_tokens), func.sum(Generation.accepted_tokens))
            .join(Job, Job.id == Generation.job_id)
            .where(Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id, Generation.role, Generation.seq_index)
            .order_by(Job.batch_id, Generation.role, Generation.seq_index)
        ).all()
    return [AcceptanceRow(r[0], str(r[1] or "?"), int(r[2]), int(r[3] or 0), int(r[4] or 0))
            for r in rows]


@dataclass(frozen=True)
class TreeRate:
    """Per completed tree: tokens/s over its wall time, and the target's busy fraction:
    measured by the engine when the job's result has it (``target_busy``: the target's busy
    seconds over the wall seconds of the job's groups, see ``seedq.service.usage``), else
    estimated: per group request, the summed verify seconds of its sequences over the
    group's wall (its longest sequence), clipped to 1, weighted by group wall."""

    batch_id: str
    custom_id: str | None
    new_tokens: int
    wall_seconds: float
    verify_seconds: float
    group_seconds: float
    busy_seconds: float | None = None  # measured; None: not stored (engine or old row)
    busy_group_seconds: float | None = None

    @property
    def tokens_per_second(self) -> float | None:
        return _ratio(self.new_tokens, self.wall_seconds)

    @property
    def measured(self) -> bool:
        return self.busy_seconds is not None and bool(self.busy_group_seconds)

    @property
    def busy_parts(self) -> tuple[float, float]:
        """(busy, group) seconds behind ``busy_fraction``: measured, else estimated."""
        if self.measured:
            return min(self.busy_seconds or 0.0, self.busy_group_seconds or 0.0), \
                self.busy_group_seconds or 0.0
        return self.verify_seconds, self.group_seconds

    @property
    def busy_fraction(self) -> float | None:
        return _ratio(*self.busy_parts)


def tree_rates(db: Database, batch_ids: Sequence[str]) -> list[TreeRate]:
    with db.session() as s:
        groups = s.execute(
            select(Job.batch_id, Job.custom_id, Job.line_no, Job.wall_seconds,
                   func.sum(Generation.new_tokens), func.sum(Generation.verify_seconds),
                   func.max(Generation.wall_seconds))
            .join(Job, Job.id == Generation.job_id)
            .where(Job.batch_id.in_(batch_ids), Job.status == COMPLETED)
            .group_by(Job.batch_id, Job.custom_id, Job.line_no, Job.wall_seconds,
                      Generation.job_id, Generation.group_key)
        ).all()
        busy = {(b, int(line)): record for b, line, record in s.execute(
            select(Job.batch_id, Job.line_no, Job.result["target_busy"])
            .where(Job.batch_id.in_(batch_ids), Job.status == COMPLETED)
        )}
    order = {batch: i for i, batch in enumerate(batch_ids)}  # as given, then line order
    per_tree: dict[tuple[str, int, str | None, float], list[float]] = defaultdict(
        lambda: [0, 0.0, 0.0]
    )
    for batch, custom, line, wall, new, verify, group_wall in groups:
        acc = per_tree[(batch, int(line), custom, float(wall or 0.0))]
        acc[0] += int(new or 0)
        acc[1] += min(float(verify or 0.0), float(group_wall or 0.0))
        acc[2] += float(group_wall or 0.0)
    return [
        TreeRate(batch, custom, int(acc[0]), wall, acc[1], acc[2],
                 *_measured(busy.get((batch, line))))
        for (batch, line, custom, wall), acc in sorted(
            per_tree.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        )
    ]


def _measured(record: Any) -> tuple[float | None, float | None]:
    """(busy seconds, group seconds) of a stored ``target_busy`` record."""
    if not isinstance(record, dict):
        return None, None
    busy, group = record.get("busy_seconds"), record.get("group_seconds")
    if not isinstance(busy, int | float) or not isinstance(group, int | float) or group <= 0:
        return None, None
    return float(busy), float(group)


@dataclass(frozen=True)
class ComparisonRow:
    """One batch on one task, over the custom_ids every compared batch completed."""

    task: str
    batch_id: str
    trees: int
    seconds: float
    baseline_seconds: float
    drafted: int
    accepted: int

    @property
    def seconds_per_tree(self) -> float | None:
        return _ratio(self.seconds, self.trees)

    @property
    def speedup(self) -> float | None:
        return _ratio(self.baseline_seconds, self.seconds)

    @property
    def acceptance(self) -> float | None:
        return _ratio(self.accepted, self.drafted)


def comparison(db: Database, batch_ids: Sequence[str]) -> list[ComparisonRow]:
    """Per task (and over all tasks), each batch's time per tree and its speedup over the
    first batch, on the custom_ids completed in every batch."""
    jobs = _completed_jobs(db, batch_ids)
    common = set.intersection(*(set(jobs.get(b, {})) for b in batch_ids)) if batch_ids else set()
    first = batch_ids[0] if batch_ids else ""
    tasks = sorted({str(jobs[first][c][0]) for c in common})
    out = []
    for task in [*tasks, ALL_TASKS]:
        ids = [c for c in common if task == ALL_TASKS or jobs[first][c][0] == task]
        base = sum(jobs[first][c][1] for c in ids)
        for batch in batch_ids:
            rows = [jobs[batch][c] for c in ids]
            out.append(ComparisonRow(task, batch, len(rows), sum(r[1] for r in rows), base,
                                     sum(r[2] for r in rows), sum(r[3] for r in rows)))
    return out


def _completed_jobs(
    db: Database, batch_ids: Sequence[str]
) -> dict[str, dict[str, tuple[str | None, float, int, int]]]:
    """batch -> custom_id -> (task, wall seconds, drafted, accepted) of completed jobs."""
    gens = (
        select(Generation.job_id, func.sum(Generation.drafted_tokens).label("drafted"),
               func.sum(Generation.accepted_tokens).label("accepted"))
        .group_by(Generation.job_id).subquery()
    )
    with db.session() as s:
        rows = s.execute(
            select(Job.batch_id, Job.custom_id, Job.task, Job.wall_seconds, gens.c.drafted,
                   gens.c.accepted)
            .outerjoin(gens, gens.c.job_id == Job.id)
            .where(Job.batch_id.in_(batch_ids), Job.status == COMPLETED,
                   Job.custom_id.is_not(None))
        ).all()
    out: dict[str, dict[str, tuple[str | None, float, int, int]]] = defaultdict(dict)
    for batch, custom, task, wall, drafted, accepted in rows:
        out[batch][custom] = (task, float(wall or 0.0), int(drafted or 0), int(accepted or 0))
    return out
