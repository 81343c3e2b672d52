"""``generations.reused_prompt_tokens``: prompt tokens whose KV came from the prefix cache.

The target model's prefix cache (``seedq/decoding/prefix_cache.py``) hands a group the KV of
the longest prompt prefix it already holds; this many prompt tokens of the sequence were not
encoded again. Rows written before this revision read 0.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(
            sa.Column("reused_prompt_tokens", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("reused_prompt_tokens")
