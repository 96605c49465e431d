"""Pack versions carry the signer's public key, which a puller pins on first use (issue 13, finding 6).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pack_versions", sa.Column("public_key", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pack_versions") as batch:
        batch.drop_column("public_key")
