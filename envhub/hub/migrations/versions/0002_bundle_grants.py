"""Bundle grants: an environment's owner lets another namespace's packs sell it (issue 13, finding 5).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundle_grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("env_id", sa.Integer, sa.ForeignKey("environments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("granted_by", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("granted_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("env_id", "namespace", name="uq_bundle_grant"),
    )
    op.create_index("ix_bundle_grants_env_id", "bundle_grants", ["env_id"])


def downgrade() -> None:
    op.drop_table("bundle_grants")
