"""collection ids are never reused: SQLite's collections table rebuilt with AUTOINCREMENT

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Without AUTOINCREMENT SQLite gives a new row the largest id + 1, so deleting the newest collection and creating
one hands out its id again: a write resolved against the deleted collection then lands in the new one, and its
snapshot file (indexes/ID.npz) names both. With it, ids only grow (sqlite_sequence keeps the largest ever given).
PostgreSQL's SERIAL sequence never reuses a value: nothing to do there.

The rebuild copies every row with its id; the items and heads rows keep referring to them. It needs foreign keys
off (store.engine.upgrade_sqlite sets that), or dropping the old table would cascade to every item and head.
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("rebuilding the collections table with foreign keys on would delete every item and "
                           "head (ON DELETE CASCADE): run it through simdex.store.engine.migrate")
    with op.batch_alter_table("collections", recreate="always",
                              table_kwargs={"sqlite_autoincrement": autoincrement}):
        pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
