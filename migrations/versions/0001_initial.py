"""Initial schema: batches, jobs, nodes, generations.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("task", sa.String(64), nullable=True),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("options", JSON, nullable=False),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_created_at", "batches", ["created_at"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(96), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(256), nullable=True),
        sa.Column("task", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(16), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("retry_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued','running','completed','failed','cancelled','rejected')",
            name="ck_jobs_status",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_jobs_batch_id_batches", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_jobs_batch_id_custom_id"),
    )
    op.create_index("ix_jobs_batch_id_status", "jobs", ["batch_id", "status"])
    op.create_index("ix_jobs_status_heartbeat_at", "jobs", ["status", "heartbeat_at"])
    op.create_index("ix_jobs_task", "jobs", ["task"])

    op.create_table(
        "nodes",
        sa.Column("job_id", sa.String(96), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("parent_id", sa.String(200), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("thought", sa.Text(), nullable=True),
        sa.Column("evaluation", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_nodes_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "node_id", name="pk_nodes"),
    )
    op.create_index("ix_nodes_job_id_depth", "nodes", ["job_id", "depth"])

    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(96), nullable=False),
        sa.Column("gen_key", sa.String(240), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=True),
        sa.Column("role", sa.String(32), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=True),
        sa.Column("engine", sa.String(32), nullable=True),
        sa.Column("sequences", sa.Integer(), nullable=False),
        sa.Column("shared", sa.Integer(), nullable=False),
        sa.Column("new_tokens", sa.Integer(), nullable=False),
        sa.Column("drafted_tokens", sa.Integer(), nullable=False),
        sa.Column("accepted_tokens", sa.Integer(), nullable=False),
        sa.Column("target_forwards", sa.Integer(), nullable=False),
        sa.Column("draft_forwards", sa.Integer(), nullable=False),
        sa.Column("draft_seconds", sa.Float(), nullable=False),
        sa.Column("verify_seconds", sa.Float(), nullable=False),
        sa.Column("wait_seconds", sa.Float(), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_generations_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
        sa.UniqueConstraint("job_id", "gen_key", name="uq_generations_job_id_gen_key"),
    )
    op.create_index("ix_generations_job_id_node_id", "generations", ["job_id", "node_id"])
    op.create_index("ix_generations_engine", "generations", ["engine"])
    op.create_index("ix_generations_depth", "generations", ["depth"])


def downgrade() -> None:
    op.drop_table("generations")
    op.drop_table("nodes")
    op.drop_table("jobs")
    op.drop_index("ix_batches_created_at", table_name="batches")
    op.drop_table("batches")
