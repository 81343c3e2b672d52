"""SQLAlchemy 2.0 typed models: ``batches``, ``jobs``, ``nodes``, ``generations``.

Times are stored as naive UTC. Durations people query (per generation, per job) are stored as
float seconds so the same SQL runs on SQLite and PostgreSQL without date arithmetic.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
# a Python None is stored as SQL NULL (not JSON 'null'), so ``IS NULL`` finds it
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    """Now, as the naive UTC datetime stored in every timestamp column."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JobStatus(str, enum.Enum):
    """Lifecycle: queued -> running -> completed | failed | cancelled.

    ``rejected`` marks a line that failed validation (kept with ``--skip-invalid``)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(s.value for s in cls)


FINAL_STATUSES = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    source: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # engine options of the batch (seedq.service.engines), NULL: the workers' own engine
    engine: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime)

    jobs: Mapped[list[Job]] = relationship(back_populates="batch", passive_deletes=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id"),
        CheckConstraint(
            "status IN ('queued','running','completed','failed','cancelled','rejected')",
            name="status",
        ),
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_task", "task"),
    )

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(256))
    task: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # starts, ever (never reset)
    # ``attempts`` at the last ``seedq retry``: the attempt budget counts from here
    attempt_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    worker: Mapped[str | None] = mapped_column(String(200))
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime)

    batch: Mapped[Batch] = relationship(back_populates="jobs")


class Meta(Base):
    """Key/value facts about the store itself: ``store_id`` (see ``seedq.store.identity``)."""

    __tablename__ = "seedq_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Node(Base):
    """One node of a job's reasoning tree; (job_id, node_id) is the idempotency key."""

    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_job_id_depth", "job_id", "depth"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(200))
    depth: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    thought: Mapped[str | None] = mapped_column(Text)
    evaluation: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    failure: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Generation(Base):
    """One generated sequence: which engine, how many tokens, and where the time went.

    ``gen_key`` (``"<group_key>#<seq_index>"``) is unique per job, so a re-run upserts the
    same rows. ``group_key`` names the group request the sequence came from (``"0.1/value"``:
    expansion of node 0.1, value judgements), ``seq_index`` its place in that group, ``role``
    its phase (thought, evaluation, solution, judge) and ``strategy`` what asked for it
    (sample, propose, value, vote, solution, judge). A sequence shared by ``shared`` > 1
    sibling nodes (a proposal, a vote) has ``node_id`` NULL. ``sequences`` is 1 for every row
    written since revision 0002; rows of revision 0001 (``group_key`` NULL) summed that many
    sequences of one phase."""

    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("job_id", "gen_key"),
        Index("ix_generations_job_id_node_id", "job_id", "node_id"),
        Index("ix_generations_engine", "engine"),
        Index("ix_generations_depth", "depth"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    gen_key: Mapped[str] = mapped_column(String(240))
    group_key: Mapped[str | None] = mapped_column(String(240))
    seq_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    node_id: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(32))
    strategy: Mapped[str | None] = mapped_column(String(32))
    depth: Mapped[int | None] = mapped_column(Integer)
    engine: Mapped[str | None] = mapped_column(String(32))
    sequences: Mapped[int] = mapped_column(Integer, default=1)
    shared: Mapped[int] = mapped_column(Integer, default=1)
    new_tokens: Mapped[int] = mapped_column(Integer, default=0)
    drafted_tokens: Mapped[int] = mapped_column(Integer, default=0)
    accepted_tokens: Mapped[int] = mapped_column(Integer, default=0)
    target_forwards: Mapped[int] = mapped_column(Integer, default=0)
    draft_forwards: Mapped[int] = mapped_column(Integer, default=0)
    # prompt tokens whose KV the target took from the prefix cache (not encoded again)
    reused_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    draft_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    verify_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    wait_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
