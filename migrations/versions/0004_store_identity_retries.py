"""The store's identity (``seedq_meta``) and the attempt history kept across ``seedq retry``.

``seedq_meta`` holds key/value rows; ``store_id`` is a random id written here at upgrade
(or at first use), carried by every job payload so that a worker never takes a job of a
store it is not connected to. ``jobs.attempts`` now counts every start of a job, ever;
``jobs.attempt_base`` is its value at the last ``seedq retry`` (the attempt budget counts
from there) and ``jobs.retries`` how many times the job was retried.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    meta = op.create_table(
        "seedq_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_seedq_meta")),
    )
    op.bulk_insert(meta, [{"key": "store_id", "value": f"s{secrets.token_hex(8)}"}])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("attempt_base", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retries")
        batch.drop_column("attempt_base")
    op.drop_table("seedq_meta")
