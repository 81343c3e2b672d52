"""One generations row per generated sequence: group key, index in the group, strategy.

Rows written by revision 0001 summed the sequences of one phase of a node; they keep
``group_key`` NULL (and ``seq_index`` 0) and are dropped when their job next completes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("group_key", sa.String(240), nullable=True))
        batch.add_column(
            sa.Column("seq_index", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("strategy", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("strategy")
        batch.drop_column("seq_index")
        batch.drop_column("group_key")
