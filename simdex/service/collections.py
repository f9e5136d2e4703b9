"""The open collections of one database, by name: opened at start, created, resolved, described, deleted, closed."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from simdex.errors import InvalidArgument, NotFound
from simdex.index.ann import make_faiss_index
from simdex.service.collection import Collection
from simdex.service.embedding import Embedders
from simdex.service.validation import METRICS, check_name
from simdex.store.items import CollectionRecord, Store
from simdex.types import CollectionInfo

LOG = logging.getLogger(__name__)


class Collections:
    """Every collection of the store, each open (its index restored or rebuilt) from start to close.

    The lock orders creations and deletions; each collection's own write lock orders its writes."""

    def __init__(self, store: Store, snapshot_dir: Path, embedders: Embedders):
        self.store, self.snapshot_dir, self.embedders = store, snapshot_dir, embedders
        self._lock = threading.Lock()
        self._cols: dict[str, Collection] = {}
        for rec in store.list_collections():
            self._cols[rec.name] = self._open(rec)

    def _open(self, rec: CollectionRecord) -> Collection:
        col = Collection(rec, self.store, self.snapshot_dir)
        col.open()
        return col

    def get(self, name: str) -> Collection:
        """The open collection `name`; InvalidArgument for a malformed name, NotFound for an unknown one."""
        check_name(name)
        col = self._cols.get(name)
        if col is None:
            raise NotFound(f"collection {name!r} not found")
        return col

    def all(self) -> list[Collection]:
        """Every open collection, by name."""
        return sorted(self._cols.values(), key=lambda c: c.name)

    def info(self, col: Collection) -> CollectionInfo:
        """The public description of `col`, with its live count and the fingerprint stored now."""
        r = col.info
        fp = self.store.embedder_fingerprint(r.id) if r.embedder else ""
        return CollectionInfo(r.name, r.dim, r.metric, r.index, col.ann.n_live, col.ann.trained, col.seq,
                              r.created_unix_ms, r.embedder, fp)

    def create(self, name: str, dim: int, metric: str = "l2", index: str = "Flat", embedder: str = "") -> Collection:
        """A new empty collection; `dim` 0 takes the embedder's. Every argument is checked before anything is
        written (a missing embedder's weights fail now, not at the first upsert)."""
        check_name(name)
        metric = metric or "l2"
        index = index or "Flat"
        if metric not in METRICS:
            raise InvalidArgument(f"metric {metric!r} is not one of {list(METRICS)}")
        if embedder:
            dim = self.embedders.collection_dim(embedder, dim)
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidArgument(f"dim must be a positive integer, got {dim!r}")
        make_faiss_index(dim, metric, index)  # validates dim, metric and description
        with self._lock:
            col = self._open(self.store.create_collection(name, dim, metric, index, embedder))
            self._cols[name] = col
        return col

    def delete(self, name: str) -> None:
        """Drop the collection, its items and its heads (one transaction), then its index and snapshot."""
        with self._lock:
            col = self.get(name)
            with col.write_lock:
                self.store.delete_collection(name)
                del self._cols[name]
            col.close(remove_snapshot=True)

    def close(self) -> None:
        for col in self._cols.values():
            col.close()
