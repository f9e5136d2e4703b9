"""The durable store: SQLAlchemy 2.0 models, engine factory and the repository over them.

The database is the source of truth; FAISS indexes are derived from it. Every write method is one
transaction: it commits everything or nothing. Vectors are stored as packed little-endian float32.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from sqlalchemy import (
    JSON, BigInteger, Engine, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint,
    create_engine, delete, event, func, insert, select, update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simdex.store import filters

LOG = logging.getLogger(__name__)
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
# SQLite allows 32766 bound parameters per statement; stay well below for IN (...) lists.
CHUNK = 4000


class Base(DeclarativeBase):
    pass


class CollectionRow(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))
    index_desc: Mapped[str] = mapped_column(String(256))
    embedder: Mapped[str] = mapped_column(String(128), default="")
    embedder_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    seq: Mapped[int] = mapped_column(BigInteger, default=0)       # last committed change
    next_iid: Mapped[int] = mapped_column(BigInteger, default=0)  # internal ids are never reused
    created_unix_ms: Mapped[int] = mapped_column(BigInteger)


class ItemRow(Base):
    __tablename__ = "items"

    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    iid: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # internal int64 id, new on every write
    external_id: Mapped[str] = mapped_column(String(512))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    vector: Mapped[bytes] = mapped_column(LargeBinary)             # (dim,) little-endian float32
    content_hash: Mapped[str] = mapped_column(String(128))
    embedder_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    seq: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("collection_id", "external_id", name="uq_items_external_id"),
        Index("ix_items_seq", "collection_id", "seq"),
    )


class HeadRow(Base):
    """One version of a linear head. Weights are packed little-endian float32 arrays (never pickles): `weights`
    holds the arrays of `shapes` one after the other, e.g. W (out, dim) then b (out,)."""
    __tablename__ = "heads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    target_id: Mapped[int | None] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    classes: Mapped[list] = mapped_column(JSON_TYPE)              # JSON values: ints stay ints, strings strings
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    params: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    shapes: Mapped[list] = mapped_column(JSON_TYPE)               # [[out, dim], [out]]
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    trained_on: Mapped[int] = mapped_column(BigInteger)
    embedder_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    target_fingerprint: Mapped[str] = mapped_column(String(128), default="")
    created_unix_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_heads_name_version"),
        Index("ix_heads_collection", "collection_id"),
    )


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    dim: int
    metric: str
    index: str
    embedder: str
    seq: int
    created_unix_ms: int

    @classmethod
    def of(cls, row) -> "CollectionInfo":
        return cls(row.id, row.name, row.dim, row.metric, row.index_desc, row.embedder, row.seq,
                   row.created_unix_ms)


@dataclass(frozen=True)
class WriteResult:
    seq: int
    added_iids: np.ndarray      # (n,) int64, internal ids of the rows written
    removed_iids: np.ndarray    # (m,) int64, internal ids that no longer exist


@dataclass(frozen=True)
class ItemRecord:
    id: str
    vector: np.ndarray | None
    metadata: dict
    content_hash: str


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
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Repository over the collections and items tables. Each public method is one unit of work."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str, index: str, embedder: str = "") -> CollectionInfo:
        with self.engine.begin() as conn:
            if conn.execute(select(CollectionRow.id).where(CollectionRow.name == name)).first():
                raise AlreadyExists(f"collection {name!r} already exists")
            now = int(time.time() * 1000)
            conn.execute(insert(CollectionRow).values(
                name=name, dim=dim, metric=metric, index_desc=index, embedder=embedder,
                embedder_fingerprint="", seq=0, next_iid=0, created_unix_ms=now,
            ))
            row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).one()
        return CollectionInfo.of(row)

    def get_collection(self, name: str) -> CollectionInfo:
        with self.engine.connect() as conn:
            row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).first()
        if row is None:
            raise NotFound(f"collection {name!r} not found")
        return CollectionInfo.of(row)

    def list_collections(self) -> list[CollectionInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(CollectionRow).order_by(CollectionRow.name)).all()
        return [CollectionInfo.of(r) for r in rows]

    def delete_collection(self, name: str) -> CollectionInfo:
        with self.engine.begin() as conn:
            row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).first()
            if row is None:
                raise NotFound(f"collection {name!r} not found")
            conn.execute(delete(ItemRow).where(ItemRow.collection_id == row.id))
            conn.execute(delete(HeadRow).where((HeadRow.collection_id == row.id) | (HeadRow.target_id == row.id)))
            conn.execute(delete(CollectionRow).where(CollectionRow.id == row.id))
        return CollectionInfo.of(row)

    def embedder_fingerprint(self, cid: int) -> str:
        """The collection's embedder fingerprint as stored now ("" for plain vectors); read fresh, never cached."""
        with self.engine.connect() as conn:
            fp = conn.execute(select(CollectionRow.embedder_fingerprint).where(CollectionRow.id == cid)).scalar()
        if fp is None:
            raise NotFound("collection was deleted")
        return fp

    def set_embedder_fingerprint(self, cid: int, fingerprint: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(CollectionRow).where(CollectionRow.id == cid).values(embedder_fingerprint=fingerprint))

    # ---- writes ------------------------------------------------------------------------------------------
    def _lock_collection(self, conn, cid: int, fingerprint: str = ""):
        """Lock the collection row for this transaction; with a `fingerprint`, check it against the collection's
        (recording it if this is the collection's first embedder-made write)."""
        stmt = select(CollectionRow.seq, CollectionRow.next_iid, CollectionRow.embedder_fingerprint,
                      CollectionRow.name).where(CollectionRow.id == cid)
        if self.dialect != "sqlite":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFound("collection was deleted")
        if fingerprint and row.embedder_fingerprint != fingerprint:
            if row.embedder_fingerprint:
                raise FailedPrecondition(
                    f"collection {row.name!r} holds vectors of embedder weights {row.embedder_fingerprint}; these "
                    f"were made with {fingerprint}, and the two spaces do not mix")
            conn.execute(update(CollectionRow).where(CollectionRow.id == cid)
                         .values(embedder_fingerprint=fingerprint))
        return row.seq, row.next_iid

    def _existing(self, conn, cid: int, ext_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for i in range(0, len(ext_ids), CHUNK):
            chunk = list(ext_ids[i:i + CHUNK])
            rows = conn.execute(select(ItemRow.external_id, ItemRow.iid).where(
                ItemRow.collection_id == cid, ItemRow.external_id.in_(chunk)))
            found.update({r.external_id: r.iid for r in rows})
        return found

    def _delete_iids(self, conn, cid: int, iids: Sequence[int]) -> None:
        for i in range(0, len(iids), CHUNK):
            conn.execute(delete(ItemRow).where(ItemRow.collection_id == cid,
                                               ItemRow.iid.in_(list(iids[i:i + CHUNK]))))

    def upsert(self, cid: int, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict],
               hashes: Sequence[str], fingerprint: str = "") -> WriteResult:
        """Replace-or-insert `ids` with (n, d) float32 `vectors` in one transaction."""
        n = len(ids)
        with self.engine.begin() as conn:
            seq, next_iid = self._lock_collection(conn, cid, fingerprint)
            seq += 1
            old = self._existing(conn, cid, ids)
            removed = np.fromiter(old.values(), dtype=np.int64, count=len(old))
            self._delete_iids(conn, cid, removed.tolist())
            added = np.arange(next_iid, next_iid + n, dtype=np.int64)
            rows = [
                {"collection_id": cid, "iid": int(added[i]), "external_id": ids[i], "meta": metadata[i],
                 "vector": vectors[i].tobytes(), "content_hash": hashes[i],
                 "embedder_fingerprint": fingerprint, "seq": seq}
                for i in range(n)
            ]
            conn.execute(insert(ItemRow.__table__), rows)
            conn.execute(update(CollectionRow).where(CollectionRow.id == cid)
                         .values(seq=seq, next_iid=next_iid + n))
        return WriteResult(seq, added, removed)

    def delete(self, cid: int, ids: Sequence[str], ignore_missing: bool) -> WriteResult:
        with self.engine.begin() as conn:
            seq, _ = self._lock_collection(conn, cid)
            old = self._existing(conn, cid, ids)
            missing = [i for i in ids if i not in old]
            if missing and not ignore_missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise NotFound(f"{len(missing)} id(s) not found: {shown}{more}; nothing was deleted")
            removed = np.fromiter(old.values(), dtype=np.int64, count=len(old))
            if len(removed):
                seq += 1
                self._delete_iids(conn, cid, removed.tolist())
                conn.execute(update(CollectionRow).where(CollectionRow.id == cid).values(seq=seq))
        return WriteResult(seq, np.zeros(0, np.int64), removed)

    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, cid: int, dim: int, ids: Sequence[str], with_vectors: bool = True,
            ignore_missing: bool = False) -> list[ItemRecord]:
        cols = [ItemRow.external_id, ItemRow.meta, ItemRow.content_hash]
        if with_vectors:
            cols.append(ItemRow.vector)
        found = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), CHUNK):
                rows = conn.execute(select(*cols).where(
                    ItemRow.collection_id == cid, ItemRow.external_id.in_(list(ids[i:i + CHUNK]))))
                found.update({r.external_id: r for r in rows})
        missing = [i for i in ids if i not in found]
        if missing and not ignore_missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise NotFound(f"{len(missing)} id(s) not found: {shown}")
        ids = [i for i in ids if i in found]
        return [
            ItemRecord(
                i,
                np.frombuffer(found[i].vector, dtype="<f4").copy() if with_vectors else None,
                found[i].meta,
                found[i].content_hash,
            )
            for i in ids
        ]

    def count(self, cid: int, filter_spec: filters.Filter | None = None) -> int:
        stmt = select(func.count()).select_from(ItemRow).where(ItemRow.collection_id == cid)
        if filter_spec:
            stmt = stmt.where(filters.compile_sql(filter_spec, ItemRow.meta, self.dialect))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def filter_iids(self, cid: int, filter_spec: filters.Filter) -> np.ndarray:
        """(m,) int64 internal ids of the items that match the filter."""
        stmt = select(ItemRow.iid).where(
            ItemRow.collection_id == cid, filters.compile_sql(filter_spec, ItemRow.meta, self.dialect))
        with self.engine.connect() as conn:
            return np.fromiter((r[0] for r in conn.execute(stmt)), dtype=np.int64)

    def live(self, cid: int) -> tuple[np.ndarray, list[str]]:
        """Every live item: ((n,) int64 internal ids, external ids), ordered by internal id."""
        stmt = select(ItemRow.iid, ItemRow.external_id).where(ItemRow.collection_id == cid).order_by(ItemRow.iid)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def vectors(self, cid: int, dim: int, iids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """((m,) bool found, (found.sum(), dim) float32) for `iids`, in their order. Items deleted since the caller
        listed them are not found: callers drop them rather than read stale or uninitialised rows."""
        pos = {int(v): j for j, v in enumerate(iids)}
        blobs: list[bytes | None] = [None] * len(iids)
        with self.engine.connect() as conn:
            for i in range(0, len(iids), CHUNK):
                rows = conn.execute(select(ItemRow.iid, ItemRow.vector).where(
                    ItemRow.collection_id == cid, ItemRow.iid.in_([int(v) for v in iids[i:i + CHUNK]])))
                for iid, blob in rows:
                    blobs[pos[iid]] = blob
        found = np.array([b is not None for b in blobs], dtype=bool)
        x = np.frombuffer(b"".join(b for b in blobs if b is not None), dtype="<f4").reshape(-1, dim).copy()
        return found, x

    def iter_vectors(self, cid: int, dim: int, batch: int = 20000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every live vector in internal-id order, in batches of ((b,) int64 iids, (b, dim) float32)."""
        last = -1
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(ItemRow.iid, ItemRow.vector).where(
                    ItemRow.collection_id == cid, ItemRow.iid > last).order_by(ItemRow.iid).limit(batch)).all()
            if not rows:
                return
            iids = np.array([r[0] for r in rows], dtype=np.int64)
            x = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            yield iids, x
            last = int(iids[-1])

    def metadata(self, cid: int, iids: Sequence[int]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(iids), CHUNK):
                rows = conn.execute(select(ItemRow.iid, ItemRow.meta).where(
                    ItemRow.collection_id == cid, ItemRow.iid.in_([int(v) for v in iids[i:i + CHUNK]])))
                out.update({r[0]: r[1] for r in rows})
        return out


def check_metadata(texts: Sequence[str | dict], n: int) -> list[dict]:
    """JSON object texts or dicts (one per item, or none at all) -> dicts; InvalidArgument naming the bad one."""
    if not texts:
        return [{} for _ in range(n)]
    if len(texts) != n:
        raise InvalidArgument(f"metadata: got {len(texts)} entries for {n} ids; give one JSON object per id or none")
    out = []
    for i, t in enumerate(texts):
        if t == "":
            out.append({})
            continue
        if isinstance(t, dict):  # in-process callers: the same checks as for text
            try:
                t = json.dumps(t, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"metadata[{i}]: not JSON-serialisable ({exc})") from None
        try:
            obj = json.loads(t, parse_constant=_reject_constant)
        except ValueError as exc:
            raise InvalidArgument(f"metadata[{i}]: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise InvalidArgument(f"metadata[{i}]: must be a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")
