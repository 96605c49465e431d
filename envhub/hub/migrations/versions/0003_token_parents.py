"""Tokens remember the token that minted them (issue 13, finding 7).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:  # SQLite adds a foreign key only by rebuilding the table
        batch.add_column(sa.Column("parent_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_tokens_parent_id", "tokens", ["parent_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_tokens_parent_id", ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("ix_tokens_parent_id")
        batch.drop_constraint("fk_tokens_parent_id", type_="foreignkey")
        batch.drop_column("parent_id")
