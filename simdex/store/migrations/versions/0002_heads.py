"""heads: versioned linear heads trained on stored vectors

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "heads",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), sa.ForeignKey("collections.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("target_id", sa.Integer(), sa.ForeignKey("collections.id", ondelete="CASCADE"), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("classes", json_type, nullable=False),
        sa.Column("metrics", json_type, nullable=False),
        sa.Column("params", json_type, nullable=False),
        sa.Column("shapes", json_type, nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("trained_on", sa.BigInteger(), nullable=False),
        sa.Column("embedder_fingerprint", sa.String(128), nullable=False),
        sa.Column("target_fingerprint", sa.String(128), nullable=False),
        sa.Column("created_unix_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_heads_name_version"),
    )
    op.create_index("ix_heads_collection", "heads", ["collection_id"])


def downgrade() -> None:
    op.drop_index("ix_heads_collection", table_name="heads")
    op.drop_table("heads")
