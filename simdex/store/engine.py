"""The database engine, made in a factory (never at import), and the schema migration to the newest revision."""
from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event

LOG = logging.getLogger(__name__)


SQLITE_FILE = "simdex.db"  # the database of a data directory when no --db is given
MIGRATIONS = Path(__file__).parent / "migrations"  # Alembic's scripts (store/migrations)


def default_db_url(data_dir: str | Path) -> str:
    """The database of a data directory when no --db is given: SQLite beside the index snapshots."""
    return f"sqlite:///{(Path(data_dir) / SQLITE_FILE).resolve()}"


def make_engine(url: str) -> Engine:
    """Engine for a database URL. SQLite gets WAL and synchronous=FULL: a commit survives kill -9 and power loss."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision, in one transaction (all revisions or none)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            upgrade_sqlite(conn)
        else:
            with conn.begin():
                upgrade(conn)


def upgrade(conn: Connection) -> None:
    """Run the Alembic revisions up to the newest on `conn`, inside the caller's transaction."""
    from alembic import command  # noqa: PLC0415 - only the server's start-up needs alembic
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def upgrade_sqlite(conn: Connection) -> None:
    """SQLite: the revisions with foreign keys off, in one explicit transaction, and the keys checked before commit.

    A revision that rebuilds a table (0003) drops the old one; with foreign keys on, that DROP would first delete
    every row referring to it (ON DELETE CASCADE: all items and heads). SQLite ignores the pragma inside a
    transaction, so it is set before one begins. The driver would otherwise run DDL outside any transaction; the
    explicit BEGIN IMMEDIATE makes the whole upgrade atomic and serialises two servers starting on one file."""
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    conn.commit()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            upgrade(conn)
            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise RuntimeError(f"schema migration left {len(bad)} rows whose references are broken "
                                   f"(first: {tuple(bad[0])}); nothing was changed")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
