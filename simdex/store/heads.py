"""The heads repository: versioned linear heads, their metrics and their weights as plain float32 arrays.

Weights are stored as packed little-endian float32 bytes (simdex.wire) with their shapes in JSON, never as pickles
(loading a pickle from a database is code execution). Saving a new version of a head is one transaction that also
removes the older versions, so the old version keeps serving until the new one is committed.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from simdex.errors import AlreadyExists, InvalidArgument, NotFound
from simdex.store.items import Store
from simdex.store.tables import CollectionRow, HeadRow
from simdex.wire import to_bytes, unpack_floats


@dataclass(frozen=True)
class HeadRecord:
    """One version of a head as the service trains, stores and serves it (with the database ids of its
    collections and, when loaded, its weights); the public view of it is simdex.types.HeadInfo."""
    name: str
    collection: str
    kind: str
    classes: list                      # JSON values, in probability-column order ([] for projections)
    metrics: dict
    params: dict
    trained_on: int
    embedder_fingerprint: str
    dim: int                           # input dimension
    out_dim: int                       # classes or target dimension
    target_collection: str = ""
    target_fingerprint: str = ""
    version: int = 0
    created_unix_ms: int = 0
    collection_id: int = 0
    target_id: int | None = None
    coef: np.ndarray | None = field(default=None, repr=False)        # (out_dim, dim) float32
    intercept: np.ndarray | None = field(default=None, repr=False)   # (out_dim,) float32


def pack_weights(arrays: list[np.ndarray]) -> tuple[bytes, list[list[int]]]:
    """Float arrays -> (their float32 bytes one after the other, their shapes)."""
    return b"".join(to_bytes(a) for a in arrays), [list(np.shape(a)) for a in arrays]


def unpack_weights(blob: bytes, shapes: list[list[int]]) -> list[np.ndarray]:
    """The inverse of pack_weights: writable float32 arrays of `shapes`; InvalidArgument when the sizes disagree."""
    counts = [int(np.prod(shape)) for shape in shapes]
    if 4 * sum(counts) != len(blob):
        raise InvalidArgument(f"stored weights hold {len(blob)} bytes, shapes {shapes} need {4 * sum(counts)}")
    out, offset = [], 0
    for shape, count in zip(shapes, counts):
        out.append(unpack_floats(blob, count, offset).reshape(shape).copy())
        offset += 4 * count
    return out


class HeadStore:
    """Repository over the heads table. Each public method is one unit of work."""

    def __init__(self, store: Store):
        self.engine = store.engine
        self._cache: dict[str, tuple[int, HeadRecord]] = {}   # name -> (row id, record with weights)
        self._lock = threading.Lock()

    def _select(self, with_weights: bool):
        target = aliased(CollectionRow)
        cols = [c for c in HeadRow.__table__.c if with_weights or c.name != "weights"]
        return (select(*cols, CollectionRow.name.label("collection"), target.name.label("target"))
                .join(CollectionRow, CollectionRow.id == HeadRow.collection_id)
                .outerjoin(target, target.id == HeadRow.target_id))

    @staticmethod
    def _record(row, with_weights: bool) -> HeadRecord:
        coef = intercept = None
        if with_weights:
            coef, intercept = unpack_weights(row.weights, row.shapes)
        dim = row.shapes[0][1]
        return HeadRecord(row.name, row.collection, row.kind, list(row.classes), dict(row.metrics), dict(row.params),
                          row.trained_on, row.embedder_fingerprint, dim, row.shapes[0][0], row.target or "",
                          row.target_fingerprint, row.version, row.created_unix_ms, row.collection_id, row.target_id,
                          coef, intercept)

    @staticmethod
    def _check_free(conn, rec: HeadRecord) -> list:
        rows = conn.execute(select(HeadRow.version, HeadRow.collection_id, HeadRow.target_id, HeadRow.kind,
                                   CollectionRow.name)
                            .join(CollectionRow, CollectionRow.id == HeadRow.collection_id)
                            .where(HeadRow.name == rec.name)).all()
        for r in rows:
            if (r.collection_id, r.target_id, r.kind) != (rec.collection_id, rec.target_id, rec.kind):
                raise AlreadyExists(
                    f"head {rec.name!r} already exists ({r.kind} head of collection {r.name!r}); head names are "
                    "unique across the server: delete it first or choose another name")
        return rows

    def check_free(self, rec: HeadRecord) -> None:
        """AlreadyExists unless `rec.name` is unused or a head of the same collection, target and kind (a retrain)."""
        with self.engine.connect() as conn:
            self._check_free(conn, rec)

    def save(self, rec: HeadRecord) -> HeadRecord:
        """Store `rec` as the next version of its name; returns it with version and created time set.

        AlreadyExists when the name belongs to a head of another collection, kind or target."""
        blob, shapes = pack_weights([rec.coef, rec.intercept])
        now = int(time.time() * 1000)
        try:
            with self.engine.begin() as conn:
                rows = self._check_free(conn, rec)
                version = max((r.version for r in rows), default=0) + 1
                conn.execute(insert(HeadRow).values(
                    name=rec.name, version=version, collection_id=rec.collection_id, target_id=rec.target_id,
                    kind=rec.kind, classes=rec.classes, metrics=rec.metrics, params=rec.params, shapes=shapes,
                    weights=blob, trained_on=rec.trained_on, embedder_fingerprint=rec.embedder_fingerprint,
                    target_fingerprint=rec.target_fingerprint, created_unix_ms=now))
                conn.execute(delete(HeadRow).where(HeadRow.name == rec.name, HeadRow.version < version))
        except IntegrityError:
            raise AlreadyExists(f"head {rec.name!r} was stored by another training at the same time; "
                                "retry to train a newer version") from None
        return replace(rec, version=version, created_unix_ms=now)

    def _latest_id(self, conn, name: str) -> int:
        hid = conn.execute(select(HeadRow.id).where(HeadRow.name == name)
                           .order_by(HeadRow.version.desc()).limit(1)).scalar()
        if hid is None:
            raise NotFound(f"head {name!r} not found")
        return hid

    def get(self, name: str, with_weights: bool = False) -> HeadRecord:
        """The latest version of head `name` (with its weights when asked; those are cached per version)."""
        with self.engine.connect() as conn:
            hid = self._latest_id(conn, name)
            with self._lock:
                hit = self._cache.get(name)
            if hit and hit[0] == hid:
                return hit[1]
            row = conn.execute(self._select(with_weights).where(HeadRow.id == hid)).first()
        if row is None:  # deleted between the two reads
            raise NotFound(f"head {name!r} not found")
        rec = self._record(row, with_weights)
        if with_weights:
            with self._lock:
                self._cache[name] = (hid, rec)
        return rec

    def list(self, collection_id: int | None = None) -> list[HeadRecord]:
        """The latest version of every head (of one collection when given), by name."""
        latest = select(HeadRow.name, func.max(HeadRow.version).label("v")).group_by(HeadRow.name).subquery()
        stmt = self._select(False).join(latest, (latest.c.name == HeadRow.name) & (latest.c.v == HeadRow.version))
        if collection_id is not None:
            stmt = stmt.where(HeadRow.collection_id == collection_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(HeadRow.name)).all()
        return [self._record(r, False) for r in rows]

    def delete(self, name: str) -> int:
        """Delete every version of head `name`; returns how many."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(HeadRow).where(HeadRow.name == name)).rowcount
        with self._lock:
            self._cache.pop(name, None)
        if not n:
            raise NotFound(f"head {name!r} not found")
        return n
