"""The SQL side of backup and restore: a consistent copy of simdex's tables into one new SQLite file, a description
of what such a file holds, and its rows brought back into an empty database in one transaction.

The copy is a SQLite database of simdex's own schema (its Alembic revisions, `alembic_version` included) whatever the
source: SQLite through its online backup API (one step inside one read transaction; in WAL mode writers go on),
PostgreSQL table by table inside one REPEATABLE READ READ ONLY transaction (every table read at one snapshot).
Restore reads such a file only, so one code path serves every pair of databases. Rows travel as columns, never
pickled. The largest collection id ever given travels too, so restored ids are still never reused.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from simdex.errors import FailedPrecondition, NotFound
from simdex.store.engine import MIGRATIONS, make_engine, migrate
from simdex.store.tables import Base, CollectionRow, HeadRow, ItemRow

TABLES = Base.metadata.sorted_tables  # the collections before the items and heads that refer to them
BATCH = 2000                          # rows per INSERT while copying


def head_revision() -> str:
    """The newest schema revision this simdex knows (the one `migrate` brings a database to)."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def source_engine(url: str) -> Engine:
    """An engine on an existing simdex database, to back it up without changing it: NotFound for a SQLite file that
    does not exist (connecting would create it)."""
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        if not path.is_file():
            raise NotFound(f"no simdex database at {path}: give the data directory of a store (--data) or its --db")
    return make_engine(url)  # its revision is checked by the backup that reads it (service.backup.fill)


def check_revision(engine: Engine) -> None:
    """FailedPrecondition unless the database behind `engine` is a simdex store at the newest schema revision."""
    with engine.connect() as conn:
        found = MigrationContext.configure(conn).get_current_revision()
    if found != head_revision():
        what = "is not a simdex store (no schema revision)" if found is None else f"is at schema revision {found}"
        raise FailedPrecondition(f"the database {engine.url.render_as_string(hide_password=True)} {what}; this "
                                 f"simdex backs up revision {head_revision()}: start its server once to migrate it")


def export(engine: Engine, path: Path) -> None:
    """Write a consistent copy of the database behind `engine` to the new SQLite file `path`, while writes go on."""
    if engine.dialect.name == "sqlite":
        _sqlite_backup(engine, path)
    else:
        _export_rows(engine, path)


def _sqlite_backup(engine: Engine, path: Path) -> None:
    raw = engine.raw_connection()
    try:
        dst = sqlite3.connect(path)
        try:
            raw.driver_connection.backup(dst)  # pages=-1: the whole file in one step, at one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")  # the copy arrives in WAL mode: make it one file again
        finally:
            dst.close()
    finally:
        raw.close()


def _export_rows(engine: Engine, path: Path) -> None:
    out = create_engine(f"sqlite:///{path}")
    try:
        migrate(out)
        with engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as src, \
                out.begin() as dst:
            for table in TABLES:
                _copy_table(src, dst, table)
            _raise_id_floor(dst, _id_floor(src))
    finally:
        out.dispose()


def _copy_table(src: Connection, dst: Connection, table) -> None:
    """Every row of `table` from `src` to `dst`, streamed (a server-side cursor on PostgreSQL) in BATCH rows."""
    stmt = select(table).order_by(*table.primary_key.columns).execution_options(yield_per=BATCH)
    for rows in src.execute(stmt).partitions():
        dst.execute(insert(table), [r._asdict() for r in rows])


def _id_floor(conn: Connection) -> int:
    """The largest collection id ever given (deleted collections' included: tables.CollectionRow)."""
    if conn.dialect.name == "sqlite":
        given = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'collections'")).scalar()
    else:
        given = conn.execute(text("SELECT pg_sequence_last_value(pg_get_serial_sequence('collections', 'id'))")
                             ).scalar()
    return max(int(given or 0), int(conn.execute(select(func.coalesce(func.max(CollectionRow.id), 0))).scalar()))


def _raise_id_floor(conn: Connection, floor: int) -> None:
    """Make the next collection id larger than `floor`; on PostgreSQL, the heads' ids also follow the rows copied
    with their ids (explicit ids do not move a sequence)."""
    if conn.dialect.name == "sqlite":
        if not conn.execute(text("UPDATE sqlite_sequence SET seq = MAX(seq, :f) WHERE name = 'collections'"),
                            {"f": floor}).rowcount:
            conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('collections', :f)"), {"f": floor})
        return
    heads = int(conn.execute(select(func.coalesce(func.max(HeadRow.id), 0))).scalar())
    for table, value in (("collections", floor), ("heads", heads)):
        conn.execute(text("SELECT setval(pg_get_serial_sequence(:t, 'id'), GREATEST(:v, 1), :v > 0)"),
                     {"t": table, "v": value})


@contextmanager
def _reading(path: Path) -> Iterator[Connection]:
    """A read-only connection to a backup's SQLite file (never modified: its checksum is in the manifest)."""
    engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def describe(path: Path) -> dict:
    """What the backup file `path` holds: its schema revision, its collections (with their sequence numbers and
    item counts) and its heads, as JSON values (the manifest lists the same, and restore compares the two)."""
    with _reading(path) as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        counts = dict(conn.execute(select(ItemRow.collection_id, func.count()).group_by(ItemRow.collection_id)).all())
        cols = conn.execute(select(CollectionRow).order_by(CollectionRow.id)).all()
        heads = conn.execute(select(HeadRow.name, HeadRow.version, CollectionRow.name.label("collection"))
                             .join(CollectionRow, HeadRow.collection_id == CollectionRow.id)
                             .order_by(HeadRow.name, HeadRow.version)).all()
    return {
        "schema_revision": revision,
        "collections": [{"id": c.id, "name": c.name, "dim": c.dim, "metric": c.metric, "index": c.index_desc,
                         "embedder": c.embedder, "seq": c.seq, "items": counts.get(c.id, 0)} for c in cols],
        "heads": [{"name": h.name, "version": h.version, "collection": h.collection} for h in heads],
    }


def restore_rows(path: Path, engine: Engine, before_commit: Callable[[], None]) -> None:
    """Copy every row of the backup file `path` into the database behind `engine` (migrated first), which must hold
    no collection, in one transaction; `before_commit()` runs inside it, and if it raises nothing is committed."""
    migrate(engine)
    with _reading(path) as src, _exclusive(engine) as dst:
        held = dst.execute(select(CollectionRow.name).order_by(CollectionRow.name)).scalars().all()
        if held:
            shown = ", ".join(repr(n) for n in held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise FailedPrecondition(f"the target database already holds {len(held)} collection(s) ({shown}): "
                                     "restore goes into an empty store only; nothing was changed")
        for table in TABLES:
            _copy_table(src, dst, table)
        _raise_id_floor(dst, _id_floor(src))
        before_commit()


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """One write transaction that no other writer can enter before it commits (SQLite: BEGIN IMMEDIATE, as in
    engine.upgrade_sqlite; PostgreSQL: the collections table locked against new collections)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.execute(text("LOCK TABLE collections IN EXCLUSIVE MODE"))
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
