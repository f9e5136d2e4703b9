"""The collections of one database, by name: opened at start, created, resolved, described, deleted, closed.

One collection whose stored data cannot be loaded never stops the server: it is kept as an Unloadable, listed
and described with the reason (CollectionInfo.unavailable), refused with FailedPrecondition naming it on any
other use, and deletable. A creation checks everything first (the index description through index.describe)
and, should opening the new collection still fail, removes its row again: a failed create leaves nothing.
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import nullcontext
from pathlib import Path

from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simdex.index import describe
from simdex.limits import Limits
from simdex.service.collection import Collection
from simdex.service.embedding import Embedders
from simdex.service.validation import METRICS, check_name
from simdex.store.items import CollectionRecord, Store
from simdex.types import CollectionInfo

LOG = logging.getLogger(__name__)
SNAPSHOT_FILE = re.compile(r"(\d+)(?:\.tmp)?\.npz")  # Collection.path and its temporary


class Unloadable:
    """A collection whose stored data could not be loaded at start. Only its name, record, snapshot path and
    `unavailable` (why, and what to do) are readable; anything else a caller uses (its index, its lock, its writes and searches) raises FailedPrecondition
    naming it, so that every service that resolves a collection refuses this one in the same words."""

    def __init__(self, record: CollectionRecord, reason: str, snapshot: Path):
        self.record, self.name, self.path = record, record.name, snapshot
        self.unavailable = (f"its stored data could not be loaded when the server started ({reason}); the other "
                            "collections are served. DeleteCollection removes it; or repair its data and restart "
                            "the server")

    def error(self) -> FailedPrecondition:
        return FailedPrecondition(f"collection {self.name!r} is unavailable: {self.unavailable}")

    def __getattr__(self, attr: str):
        raise self.error()

    def save_snapshot(self) -> bool:
        return False  # nothing loaded, nothing to write

    def prune_removals(self, keep: int | None = None) -> int:
        return 0  # its log is pruned by a server that could open it

    def close(self, remove_snapshot: bool = False) -> None:
        if remove_snapshot:
            self.path.unlink(missing_ok=True)


class Collections:
    """Every collection of the store, each open (its index restored or rebuilt) from start to close.

    The lock orders creations and deletions; each collection's own write lock orders its writes."""

    def __init__(self, store: Store, snapshot_dir: Path, embedders: Embedders, limits: Limits | None = None,
                 search_backend: str = "faiss"):
        self.store, self.snapshot_dir, self.embedders = store, snapshot_dir, embedders
        self.limits = limits or Limits()
        self.search_backend = search_backend  # "faiss" or "torch" (resolved): each collection's exact core
        self._lock = threading.Lock()
        self._cols: dict[str, Collection | Unloadable] = {}
        records = store.list_collections()
        self._remove_orphan_snapshots({r.id for r in records})
        for rec in records:
            self._cols[rec.name] = self._load(rec)

    def _load(self, rec: CollectionRecord) -> Collection | Unloadable:
        """The collection opened (see _open), or its Unloadable when its stored data cannot be loaded."""
        try:
            return self._open(rec)
        except Exception as exc:  # noqa: BLE001 - whatever broke it, the other collections are served
            text = str(getattr(exc, "message", None) or exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[-1][:300] if text else 'no message'}"
            LOG.error("collection %s (id %d) is unavailable: %s", rec.name, rec.id, reason, exc_info=True)
            return Unloadable(rec, reason, self.snapshot_dir / f"{rec.id}.npz")

    def _open(self, rec: CollectionRecord) -> Collection:
        """The collection opened from its snapshot and the database; if that fails and a snapshot was there, the
        snapshot (derived data) is set aside as ID.npz.unusable and the index rebuilt from the database alone."""
        col = Collection(rec, self.store, self.snapshot_dir, self.search_backend)
        try:
            return self._opened(col)
        except Exception as exc:  # noqa: BLE001 - retried without the snapshot; a second failure propagates
            if not col.path.exists():
                raise
            aside = col.path.with_name(col.path.name + ".unusable")
            LOG.warning("collection %s: opening with snapshot %s failed (%s: %s); set aside as %s, rebuilding "
                        "from the database", rec.name, col.path, type(exc).__name__, exc, aside.name)
            col.path.replace(aside)
        return self._opened(Collection(rec, self.store, self.snapshot_dir, self.search_backend))

    @staticmethod
    def _opened(col: Collection) -> Collection:
        col.open()
        LOG.info("collection %s: searched by %s", col.info.name, col.search_backend)
        return col

    def _remove_orphan_snapshots(self, live: set[int]) -> None:
        """Snapshots of collections no longer in the database (deleted while the server was down, or killed between
        the commit and the unlink) are removed before anything could restore them."""
        for path in self.snapshot_dir.glob("*.npz"):
            m = SNAPSHOT_FILE.fullmatch(path.name)
            if m and int(m[1]) not in live:
                LOG.info("removing snapshot %s of a collection that no longer exists", path.name)
                path.unlink(missing_ok=True)

    def get(self, name: str) -> Collection:
        """The collection `name`; InvalidArgument for a malformed name, NotFound for an unknown one. An unloadable
        collection is returned as its Unloadable, which refuses every use (FailedPrecondition naming it)."""
        check_name(name)
        col = self._cols.get(name)
        if col is None:
            raise NotFound(f"collection {name!r} not found")
        return col  # type: ignore[return-value] - an Unloadable stands in for it and refuses every use

    def by_id(self, cid: int) -> Collection | None:
        """The open collection of database id `cid`, None when there is none (or it is unloadable)."""
        return next((c for c in list(self._cols.values()) if isinstance(c, Collection) and c.info.id == cid), None)

    def sync(self) -> list[CollectionRecord]:
        """Follow the collections that other servers on the database created or deleted: open the new ones, drop
        the deleted ones (a name deleted and created again has a new id: the old one goes, the new one opens).
        Returns the database's collections, listed under the lock (so no create or delete here is half done)."""
        with self._lock:
            records = self.store.list_collections()
            ids = {r.id for r in records}
            for name, col in list(self._cols.items()):
                if (col.record if isinstance(col, Unloadable) else col.info).id not in ids:
                    LOG.info("collection %s was deleted on another server: dropping it here", name)
                    del self._cols[name]
                    col.close(remove_snapshot=True)
            for rec in records:
                if rec.name not in self._cols:
                    LOG.info("collection %s was created on another server: opening it here", rec.name)
                    self._cols[rec.name] = self._load(rec)
        return records

    def all(self) -> list[Collection]:
        """Every collection by name, the unloadable ones included (info() describes them, snapshots skip them)."""
        return sorted(self._cols.values(), key=lambda c: c.name)  # type: ignore[return-value]

    def info(self, col: Collection | Unloadable) -> CollectionInfo:
        """The public description of `col`, with its live count and the fingerprint stored now; for an unloadable
        one, the count its rows have and the reason it is unavailable."""
        if isinstance(col, Unloadable):
            r = col.record
            fp = self.store.embedder_fingerprint(r.id) if r.embedder else ""
            return CollectionInfo(r.name, r.dim, r.metric, r.index, self.store.count(r.id), False, r.seq,
                                  r.created_unix_ms, r.embedder, fp, unavailable=col.unavailable)
        r = col.info
        fp = self.store.embedder_fingerprint(r.id) if r.embedder else ""
        return CollectionInfo(r.name, r.dim, r.metric, r.index, col.ann.n_live, col.ann.trained, col.seq,
                              r.created_unix_ms, r.embedder, fp, search_backend=col.search_backend)

    def create(self, name: str, dim: int = 0, metric: str = "l2", index: str = "Flat",
               embedder: str = "") -> Collection:
        """A new empty collection; `dim` 0 takes the embedder's. Every argument is checked before anything is
        written (a missing embedder's weights fail now, not at the first upsert; the index description is
        rehearsed on a tiny instance, see index.describe), and a create that fails after all leaves no row."""
        check_name(name)
        metric = metric or "l2"
        index = index or "Flat"
        if metric not in METRICS:
            raise InvalidArgument(f"metric {metric!r} is not one of {list(METRICS)}")
        if embedder:
            dim = self.embedders.collection_dim(embedder, dim)
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidArgument(f"dim must be a positive integer, got {dim!r} (it may be left out, 0, only with an "
                                  "embedder: the embedder's is taken)")
        if name in self._cols:  # before the rehearsal's work; the database's unique name decides under the lock
            raise AlreadyExists(f"collection {name!r} already exists")
        describe.check(dim, metric, index, self.limits)
        with self._lock:
            rec = self.store.create_collection(name, dim, metric, index, embedder)
            try:
                col = self._open(rec)
            except Exception:
                LOG.exception("collection %s: opening it after its creation failed; removing its row", name)
                self.store.delete_collection(name)
                raise
            self._cols[name] = col
        return col

    def delete(self, name: str) -> None:
        """Drop the collection, its items and its heads (one transaction), then its index and snapshot. An
        unloadable collection is deleted the same way (nothing of it is open)."""
        with self._lock:
            col = self.get(name)
            with nullcontext() if isinstance(col, Unloadable) else col.write_lock:
                self.store.delete_collection(name)
                del self._cols[name]
            col.close(remove_snapshot=True)

    def close(self) -> None:
        for col in self._cols.values():
            col.close()
