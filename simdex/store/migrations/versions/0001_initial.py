"""collections and items

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("index_desc", sa.String(256), nullable=False),
        sa.Column("embedder", sa.String(128), nullable=False),
        sa.Column("embedder_fingerprint", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("next_iid", sa.BigInteger(), nullable=False),
        sa.Column("created_unix_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "items",
        sa.Column("collection_id", sa.Integer(), sa.ForeignKey("collections.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("iid", sa.BigInteger(), primary_key=True),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("meta", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("embedder_fingerprint", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("collection_id", "external_id", name="uq_items_external_id"),
    )
    op.create_index("ix_items_seq", "items", ["collection_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_items_seq", table_name="items")
    op.drop_table("items")
    op.drop_table("collections")
