"""removed items: the internal ids each write removed, by sequence number, for replicas that catch up

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-12

Several servers on one PostgreSQL database each keep an index in memory and catch up from the database by sequence
number. New and replaced rows carry their sequence number in the items table, but a deleted row leaves it: this
table says which internal ids left after a given sequence number (tables.RemovedRow). SQLite gets it too (one code
path for writes); a database migrated to 0004 logs the removals from then on, and a server opening a collection
still compares its index snapshot with the live rows (Collection.open), so no earlier removal needs a row here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "removed_items",
        sa.Column("collection_id", sa.Integer(), sa.ForeignKey("collections.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("iid", sa.BigInteger(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_removed_items_seq", "removed_items", ["collection_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_removed_items_seq", table_name="removed_items")
    op.drop_table("removed_items")
