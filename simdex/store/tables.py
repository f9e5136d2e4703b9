"""The SQL schema as SQLAlchemy 2.0 typed models: collections, their items and the heads trained on them.

Alembic migrations (store/migrations) create these tables; the models here are what the repositories query.
Vectors and weights are packed little-endian float32 bytes (simdex.wire), never pickles.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# jsonb on PostgreSQL (indexable, compared by value), SQLite's JSON text elsewhere.
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class CollectionRow(Base):
    """One collection. Its id is never reused (SQLite AUTOINCREMENT, revision 0003; a PostgreSQL sequence): a write
    or a snapshot file that names an id names that collection only, never a later one of the same name."""
    __tablename__ = "collections"
    __table_args__ = {"sqlite_autoincrement": True}

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


HORIZON_IID = -1  # internal ids start at 0 (CollectionRow.next_iid), so this one is never an item's


class RemovedRow(Base):
    """An item row that a write removed (deleted, or replaced by a new row): its internal id and the sequence number
    of the write. Replicas on one database (service/replication.py) read these to learn which ids left after the
    sequence number their index is at; the items table keeps live rows only.

    The log is pruned (Store.prune_removals): the row of iid HORIZON_IID, when there is one, holds in `seq` the
    horizon up to which removals may be gone; a replica behind it compares its index with the live rows instead."""
    __tablename__ = "removed_items"

    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    iid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_removed_items_seq", "collection_id", "seq"),)


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
