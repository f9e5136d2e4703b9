"""The Store repository over the collections and items tables (the heads table has its own, store/heads.py).

The database is the source of truth; FAISS indexes are derived from it. Every write method is one
transaction: it commits everything or nothing. Vectors are stored as packed little-endian float32 (simdex.wire).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from simdex.errors import AlreadyExists, FailedPrecondition, Internal, NotFound
from simdex.store import filters
from simdex.store.notify import announce
from simdex.store.tables import HORIZON_IID, CollectionRow, HeadRow, ItemRow, RemovedRow
from simdex.types import Item
from simdex.wire import to_bytes, unpack_floats

LOG = logging.getLogger(__name__)
# SQLite allows 32766 bound parameters per statement; stay well below for IN (...) lists.
CHUNK = 4000
# Chunks of the removed-items log one prune deletes at most (the rest goes with the next snapshot pass).
PRUNE_CHUNKS = 25


@dataclass(frozen=True)
class CollectionRecord:
    """A collections row as the service keeps it: `id` is the database key every item and head row refers to."""
    id: int
    name: str
    dim: int
    metric: str
    index: str
    embedder: str
    seq: int
    created_unix_ms: int

    @classmethod
    def of(cls, row) -> "CollectionRecord":
        return cls(row.id, row.name, row.dim, row.metric, row.index_desc, row.embedder, row.seq,
                   row.created_unix_ms)


@dataclass(frozen=True)
class Changes:
    """What was committed to one collection after sequence number `after`, up to `seq`: the internal ids removed
    (deleted or replaced) and the rows added and still live. Applied in that order (removals, then additions),
    they bring an index at `after` to `seq` (see Store.changes).

    When the removed-items log was pruned past `after`, `removed` may lack some removals and `live` holds every
    live internal id instead (read after the log): whatever an index at `after` holds outside it was removed.
    `horizon` is the log's horizon read then: once an index has dropped what is outside `live`, it holds no id
    removed at or before it, and later changes need no `live` until the horizon passes it (`reconciled`)."""
    after: int
    seq: int
    removed: np.ndarray   # (m,) int64 internal ids
    added: np.ndarray     # (n,) int64 internal ids, ascending
    ext_ids: list[str]    # (n,) their external ids
    vectors: np.ndarray   # (n, dim) float32
    live: np.ndarray | None = None  # (l,) int64: every live internal id, when `removed` may be incomplete
    horizon: int = 0


@dataclass(frozen=True)
class WriteResult:
    seq: int
    added_iids: np.ndarray      # (n,) int64, internal ids of the rows written
    removed_iids: np.ndarray    # (m,) int64, internal ids that no longer exist
    base: int = 0               # the collection's seq just before this write, other servers' writes included


class Store:
    """Repository over the collections and items tables. Each public method is one unit of work."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str, index: str, embedder: str = "") -> CollectionRecord:
        """A new collections row, with an id no collection had before (see tables.CollectionRow)."""
        exists = AlreadyExists(f"collection {name!r} already exists")
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(CollectionRow.id).where(CollectionRow.name == name)).first():
                    raise exists
                now = int(time.time() * 1000)
                conn.execute(insert(CollectionRow).values(
                    name=name, dim=dim, metric=metric, index_desc=index, embedder=embedder,
                    embedder_fingerprint="", seq=0, next_iid=0, created_unix_ms=now,
                ))
                row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).one()
                announce(conn, "create", row.id, 0)
        except IntegrityError:  # another server on this database created it between the check and the insert
            raise exists from None
        return CollectionRecord.of(row)

    def get_collection(self, name: str) -> CollectionRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).first()
        if row is None:
            raise NotFound(f"collection {name!r} not found")
        return CollectionRecord.of(row)

    def list_collections(self) -> list[CollectionRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(CollectionRow).order_by(CollectionRow.name)).all()
        return [CollectionRecord.of(r) for r in rows]

    def delete_collection(self, name: str) -> CollectionRecord:
        with self.engine.begin() as conn:
            # the write lock first (see _lock_collection), then the row it protects
            conn.execute(update(CollectionRow).where(CollectionRow.name == name).values(seq=CollectionRow.seq))
            row = conn.execute(select(CollectionRow).where(CollectionRow.name == name)).first()
            if row is None:
                raise NotFound(f"collection {name!r} not found")
            conn.execute(delete(ItemRow).where(ItemRow.collection_id == row.id))
            conn.execute(delete(RemovedRow).where(RemovedRow.collection_id == row.id))
            conn.execute(delete(HeadRow).where((HeadRow.collection_id == row.id) | (HeadRow.target_id == row.id)))
            conn.execute(delete(CollectionRow).where(CollectionRow.id == row.id))
            announce(conn, "delete", row.id, row.seq)
        return CollectionRecord.of(row)

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
    def _lock_collection(self, conn, col: "int | CollectionRecord", dim: int | None = None, fingerprint: str = ""):
        """Lock the collection row for this transaction and re-check, inside it, that it is still the collection
        the caller resolved: its id (never reused), and its name and dim when the caller gives them (a
        CollectionRecord, or the `dim` of the vectors it writes). NotFound, nothing written, when it was deleted
        (or deleted and created again under its name) since. With a `fingerprint`, check it against the
        collection's (recording it if this is the collection's first embedder-made write)."""
        cid = _cid(col)
        where = [CollectionRow.id == cid]
        if isinstance(col, CollectionRecord):
            where += [CollectionRow.name == col.name, CollectionRow.dim == col.dim]
        if dim is not None:
            where.append(CollectionRow.dim == dim)
        # A no-op UPDATE as the transaction's first statement: on SQLite it takes the database's write lock before
        # anything is read (the driver begins a transaction at the first write, so a SELECT first would read
        # outside it), on PostgreSQL the row's lock. What is read below then holds until the commit.
        if conn.execute(update(CollectionRow).where(*where).values(seq=CollectionRow.seq)).rowcount != 1:
            what = repr(col.name) if isinstance(col, CollectionRecord) else f"with id {cid}"
            raise NotFound(f"collection {what} was deleted (or deleted and created again) while this write was "
                           "in flight; nothing was written: look the collection up again before retrying")
        row = conn.execute(select(CollectionRow.seq, CollectionRow.next_iid, CollectionRow.embedder_fingerprint,
                                  CollectionRow.name).where(CollectionRow.id == cid)).one()
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

    def _delete_iids(self, conn, cid: int, iids: Sequence[int], seq: int) -> None:
        """Delete the rows `iids`, logged as removed by the write of sequence number `seq` (tables.RemovedRow)."""
        for i in range(0, len(iids), CHUNK):
            chunk = list(iids[i:i + CHUNK])
            conn.execute(delete(ItemRow).where(ItemRow.collection_id == cid, ItemRow.iid.in_(chunk)))
            conn.execute(insert(RemovedRow.__table__), [{"collection_id": cid, "iid": v, "seq": seq} for v in chunk])

    def upsert(self, col: "int | CollectionRecord", ids: Sequence[str], vectors: np.ndarray,
               metadata: Sequence[dict], hashes: Sequence[str], fingerprint: str = "") -> WriteResult:
        """Replace-or-insert `ids` with (n, d) float32 `vectors` in one transaction, into the collection `col`
        (its id, or its record: see _lock_collection) if it still is the one of that id and of dim d."""
        n = len(ids)
        cid = _cid(col)
        with self.engine.begin() as conn:
            base, next_iid = self._lock_collection(conn, col, vectors.shape[1], fingerprint)
            seq = base + 1
            old = self._existing(conn, cid, ids)
            removed = np.fromiter(old.values(), dtype=np.int64, count=len(old))
            self._delete_iids(conn, cid, removed.tolist(), seq)
            added = np.arange(next_iid, next_iid + n, dtype=np.int64)
            rows = [
                {"collection_id": cid, "iid": int(added[i]), "external_id": ids[i], "meta": metadata[i],
                 "vector": to_bytes(vectors[i]), "content_hash": hashes[i],
                 "embedder_fingerprint": fingerprint, "seq": seq}
                for i in range(n)
            ]
            conn.execute(insert(ItemRow.__table__), rows)
            conn.execute(update(CollectionRow).where(CollectionRow.id == cid)
                         .values(seq=seq, next_iid=next_iid + n))
            announce(conn, "write", cid, seq)
        return WriteResult(seq, added, removed, base)

    def delete(self, col: "int | CollectionRecord", ids: Sequence[str], ignore_missing: bool) -> WriteResult:
        """Delete `ids` in one transaction from the collection `col` (its id or its record: see _lock_collection)."""
        cid = _cid(col)
        with self.engine.begin() as conn:
            base, _ = self._lock_collection(conn, col)
            seq = base
            old = self._existing(conn, cid, ids)
            missing = [i for i in ids if i not in old]
            if missing and not ignore_missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise NotFound(f"{len(missing)} id(s) not found: {shown}{more}; nothing was deleted")
            removed = np.fromiter(old.values(), dtype=np.int64, count=len(old))
            if len(removed):
                seq += 1
                self._delete_iids(conn, cid, removed.tolist(), seq)
                conn.execute(update(CollectionRow).where(CollectionRow.id == cid).values(seq=seq))
                announce(conn, "write", cid, seq)
        return WriteResult(seq, np.zeros(0, np.int64), removed, base)

    # ---- reads -------------------------------------------------------------------------------------------
    def get(self, cid: int, ids: Sequence[str], with_vectors: bool = True,
            ignore_missing: bool = False) -> list[Item]:
        """The items `ids` in their order (vectors (d,) float32, writable copies); NotFound unless ignore_missing."""
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
            Item(
                i,
                unpack_floats(found[i].vector).copy() if with_vectors else None,
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
        kept = [b for b in blobs if b is not None]
        return found, _matrix(cid, dim, np.asarray(iids, dtype=np.int64)[found], kept).copy()

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
            yield iids, _matrix(cid, dim, iids, [r[1] for r in rows])
            last = int(iids[-1])

    def changes(self, cid: int, dim: int, after: int, max_rows: int, reconciled: int = 0) -> Changes | None:
        """The changes committed to collection `cid` after sequence number `after` (None once it is deleted), up to
        its newest, or fewer whole writes when those would add more than `max_rows` rows (at least one write).

        Every write with a sequence number up to the one returned has committed (the collection row's lock orders
        them), so nothing below it can still appear. A row read here may have been removed since by a newer write;
        its removal is read by the next call. Past the log's horizon, `live` comes along unless the caller's index
        already dropped every id removed up to that horizon (`reconciled`: the horizon of its last such step)."""
        added_after = (ItemRow.collection_id == cid, ItemRow.seq > after)
        with self.engine.connect() as conn:
            newest = conn.execute(select(CollectionRow.seq).where(CollectionRow.id == cid)).scalar()
            if newest is None:
                return None
            per_write = conn.execute(select(ItemRow.seq, func.count()).where(*added_after, ItemRow.seq <= newest)
                                     .group_by(ItemRow.seq).order_by(ItemRow.seq)).all()
            seq = max(after, _step_end(per_write, newest, max_rows))
            rows = conn.execute(select(ItemRow.iid, ItemRow.external_id, ItemRow.vector)
                                .where(*added_after, ItemRow.seq <= seq).order_by(ItemRow.iid)).all()
            removed = conn.execute(select(RemovedRow.iid).where(
                *_logged(cid), RemovedRow.seq > after, RemovedRow.seq <= seq)).scalars().all()
            # Read after the log: a prune raises the horizon before it deletes anything, so a removal missing above
            # was pruned under a horizon this read sees (prune_removals).
            live, horizon = None, self._horizon(conn, cid)
            if horizon > max(after, reconciled):
                live = np.fromiter(conn.execute(select(ItemRow.iid).where(ItemRow.collection_id == cid)).scalars(),
                                   dtype=np.int64)
        added = np.array([r[0] for r in rows], dtype=np.int64)
        return Changes(after, int(seq), np.array(removed, dtype=np.int64), added, [r[1] for r in rows],
                       _matrix(cid, dim, added, [r[2] for r in rows]), live, int(horizon))

    @staticmethod
    def _horizon(conn, cid: int) -> int:
        """The sequence number up to which the collection's removed-items log may have been pruned (0: never)."""
        return conn.execute(select(RemovedRow.seq).where(
            RemovedRow.collection_id == cid, RemovedRow.iid == HORIZON_IID)).scalar() or 0

    def prune_removals(self, cid: int, upto: int, max_chunks: int = PRUNE_CHUNKS) -> int:
        """Forget the logged removals of collection `cid`'s writes up to sequence number `upto`; how many rows went
        (at most `max_chunks` chunks of CHUNK rows: the next call goes on).

        The horizon is raised first, in a transaction of its own under the collection row's lock (ordered with
        writes and other servers' prunes); the rows then go in chunks, each its own short transaction under that
        lock too, so a large log never holds it for long. A replica whose index is behind the horizon reads the
        live ids with its next changes (Store.changes). A collection deleted meanwhile prunes nothing more (NotFound
        is not raised)."""
        with self.engine.connect() as conn:  # most calls find nothing to do, and write nothing
            if conn.execute(select(RemovedRow.iid).where(*_logged(cid), RemovedRow.seq <= upto)
                            .limit(1)).first() is None:
                return 0
        try:
            with self.engine.begin() as conn:
                self._lock_collection(conn, cid)
                held = self._horizon(conn, cid)  # 0: no horizon row yet (sequence numbers start at 1)
                if not held:
                    conn.execute(insert(RemovedRow.__table__), [{"collection_id": cid, "iid": HORIZON_IID,
                                                                 "seq": upto}])
                elif held < upto:
                    conn.execute(update(RemovedRow).where(RemovedRow.collection_id == cid,
                                                          RemovedRow.iid == HORIZON_IID).values(seq=upto))
        except NotFound:
            return 0
        prunable = (*_logged(cid), RemovedRow.seq <= max(upto, held))  # what an earlier, bounded pass left too
        gone = 0
        for _ in range(max_chunks):
            with self.engine.begin() as conn:
                try:
                    self._lock_collection(conn, cid)  # the lock order of writes and DeleteCollection: no deadlock
                except NotFound:
                    return gone
                chunk = conn.execute(select(RemovedRow.iid).where(*prunable).limit(CHUNK)).scalars().all()
                if not chunk:
                    return gone
                gone += conn.execute(delete(RemovedRow).where(*prunable, RemovedRow.iid.in_(chunk))).rowcount
        return gone

    def metadata(self, cid: int, iids: Sequence[int]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(iids), CHUNK):
                rows = conn.execute(select(ItemRow.iid, ItemRow.meta).where(
                    ItemRow.collection_id == cid, ItemRow.iid.in_([int(v) for v in iids[i:i + CHUNK]])))
                out.update({r[0]: r[1] for r in rows})
        return out


def _logged(cid: int) -> tuple:
    """The WHERE terms of collection `cid`'s logged removals (its horizon row left out)."""
    return RemovedRow.collection_id == cid, RemovedRow.iid != HORIZON_IID


def _step_end(per_write: Sequence[tuple[int, int]], newest: int, max_rows: int) -> int:
    """The last sequence number of a step that adds at most `max_rows` rows (or one write's, if it alone has more),
    from the (seq, rows added) of the writes up to `newest` that added rows, in order."""
    total = 0
    for seq, n in per_write:
        if total and total + n > max_rows:
            return seq - 1
        total += n
    return newest


def _matrix(cid: int, dim: int, iids: np.ndarray, blobs: list[bytes]) -> np.ndarray:
    """(len(blobs), dim) float32 from packed vectors, each checked to be one of `dim` floats: a damaged row must
    fail with its name, not shift every vector after it (or fail later as a reshape)."""
    bad = [j for j, b in enumerate(blobs) if len(b) != 4 * dim]
    if bad:
        j = bad[0]
        raise Internal(f"the stored data of collection id {cid} is damaged: {len(bad)} vector(s) of the wrong size, "
                       f"first internal id {int(iids[j])} with {len(blobs[j])} bytes for dim {dim} "
                       f"({4 * dim} bytes)")
    return unpack_floats(b"".join(blobs)).reshape(len(blobs), dim)


def _cid(col: "int | CollectionRecord") -> int:
    """The collection id of an id or a record (the writes take either: see Store._lock_collection)."""
    return col.id if isinstance(col, CollectionRecord) else int(col)
