"""The domain API of a simdex server: every RPC is one call here. The servicer and the in-process client call it.

A thin facade: each concern lives in its own module and object (collections, items, search, clustering, heads,
embedding, snapshots); this class wires them over one database and data directory and keeps the public methods.
Inputs are validated at each entry, errors are simdex.errors classes, nothing partial is written, and results are
the shared simdex.types values.
"""
from __future__ import annotations

import logging
from pathlib import Path

from simdex import defaults
from simdex.embedder.registry import EmbedderPool
from simdex.index.torch_ann import resolve_backend
from simdex.limits import Limits
from simdex.service.clustering import ClusterJobs
from simdex.service.collection import Hits
from simdex.service.collections import Collections
from simdex.service.data_lock import DataLock
from simdex.service.embedding import Embedders
from simdex.service.heads import Heads
from simdex.service.items import Items
from simdex.service.replication import CATCH_UP_INTERVAL_S, Replication
from simdex.service.search import Search
from simdex.service.snapshots import Snapshots
from simdex.store.engine import default_db_url, make_engine, migrate
from simdex.store.items import Store
from simdex.types import (ClusterResult, ClusterSpec, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, HeadSpec,
                          Item, Prediction, SearchParams)

LOG = logging.getLogger(__name__)


class Simdex:
    """All collections of one data directory (index snapshots) and database (SQLite there by default)."""

    def __init__(self, data_dir: str | Path, db_url: str | None = None,
                 snapshot_interval: float = defaults.SNAPSHOT_INTERVAL_S, embedders: EmbedderPool | None = None,
                 limits: Limits | None = None, search_backend: str | None = None,
                 catch_up_interval: float = CATCH_UP_INTERVAL_S):
        self.data_dir = Path(data_dir)
        self.limits = limits or Limits()
        self.embedders = embedders or EmbedderPool()
        (self.data_dir / "indexes").mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(db_url or default_db_url(self.data_dir))
        sqlite_file = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self.data_lock = DataLock(self.data_dir, None if sqlite_file in (None, "", ":memory:") else sqlite_file)
        try:
            migrate(self.engine)
            self.store = Store(self.engine)
            self.embedding = Embedders(self.embedders, self.store, self.limits)
            # "auto" | "faiss" | "torch" (None: env SIMDEX_SEARCH_BACKEND, else auto), resolved once for every
            # collection
            backend = resolve_backend(search_backend)
            LOG.info("search backend: %s (asked: %s)", backend, search_backend or "auto/env")
            self.collections = Collections(self.store, self.data_dir / "indexes", self.embedding, self.limits,
                                           backend)
            self.items = Items(self.collections, self.store, self.embedding)
            self.heads = Heads(self.collections, self.store, self.embedding)
            self.searcher = Search(self.collections, self.store, self.embedding, self.heads, self.limits)
            self.clusters = ClusterJobs(self.limits)
            # Servers sharing a PostgreSQL database follow each other's commits (service/replication.py).
            self.replication = (Replication(self.collections, self.engine, catch_up_interval)
                                if self.engine.dialect.name == "postgresql" else None)
            self.snapshots = Snapshots(self.collections, snapshot_interval)
            if self.replication is not None:
                self.replication.start()
        except BaseException:
            self.engine.dispose()
            self.data_lock.release()
            raise

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int = 0, metric: str = "l2", index: str = "Flat",
                          embedder: str = "") -> CollectionInfo:
        """A new empty collection; with an `embedder`, `dim` may be left out (0): the embedder's."""
        return self.collections.info(self.collections.create(name, dim, metric, index, embedder))

    def get_collection(self, name: str) -> CollectionInfo:
        return self.collections.info(self.collections.get(name))

    def list_collections(self) -> list[CollectionInfo]:
        return [self.collections.info(c) for c in self.collections.all()]

    def delete_collection(self, name: str) -> None:
        self.collections.delete(name)

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, name: str, ids, vectors=None, metadata=(), hashes=(), *, images=(), texts=(),
               fingerprint: str = "") -> tuple[int, int]:
        """(n, d) float32 `vectors`, or raw `images`/`texts`, under `ids`, in one transaction -> (n, seq)."""
        return self.items.upsert(name, ids, vectors, metadata, hashes, images=images, texts=texts,
                                 fingerprint=fingerprint)

    def delete(self, name: str, ids, ignore_missing: bool = False) -> tuple[int, int]:
        return self.items.delete(name, ids, ignore_missing)

    def get(self, name: str, ids, with_vectors: bool = True, ignore_missing: bool = False) -> list[Item]:
        return self.items.get(name, ids, with_vectors, ignore_missing)

    def count(self, name: str, filter=None) -> int:  # noqa: A002
        return self.items.count(name, filter)

    # ---- search and clustering ---------------------------------------------------------------------------
    def search(self, name: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter=None, params: SearchParams = SearchParams(), page_size: int = 0,  # noqa: A002
               page_token: str = "", include_metadata: bool = False, head: str = "", images=(), texts=(),
               ) -> tuple[list[Hits], list[list[dict]] | None]:
        """k-NN or range search -> (per query: ids, (m,) float32 distances, next_page_token; metadata per hit
        when asked, else None). See service/search.py."""
        return self.searcher.search(name, queries, k, radius=radius, filter=filter, params=params,
                                    page_size=page_size, page_token=page_token, include_metadata=include_metadata,
                                    head=head, images=images, texts=texts)

    def cluster(self, name: str, spec: ClusterSpec, page_size: int = 0,
                page_token: str = "") -> tuple[ClusterResult, str]:
        """Mean shift over the collection (or its filtered items) -> (result with one page of members, next token)."""
        return self.clusters.cluster(self.collections.get(name), self.store, spec, page_size, page_token)

    # ---- heads -------------------------------------------------------------------------------------------
    def train_head(self, spec: HeadSpec) -> HeadInfo:
        return self.heads.train(spec)

    def get_head(self, name: str) -> HeadInfo:
        return self.heads.get(name)

    def list_heads(self, collection: str = "") -> list[HeadInfo]:
        return self.heads.list(collection)

    def delete_head(self, name: str) -> int:
        return self.heads.delete(name)

    def predict(self, name: str, ids=None, vectors=None, images=(), texts=()) -> Prediction:
        return self.heads.predict(name, ids, vectors, images, texts)

    # ---- embedders ---------------------------------------------------------------------------------------
    def list_embedders(self) -> list[EmbedderInfo]:
        return self.embedding.list()

    def embed(self, embedder: str, images=(), texts=(), all_frames: bool = False) -> Embedding:
        return self.embedding.embed(embedder, images, texts, all_frames)

    def translate(self, model: str, texts, beam: int = 1, max_len: int = 0) -> list[tuple[str, float]]:
        return self.embedding.translate(model, texts, beam, max_len)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def snapshot(self) -> int:
        """Snapshot every collection that changed. Returns how many files were written."""
        return self.snapshots.snapshot()

    def close(self) -> None:
        """Stop following the other servers, stop the snapshot thread, write the last snapshots, close the
        collections, release the database and the data directory."""
        if self.replication is not None:
            self.replication.close()
        self.snapshots.close()
        self.collections.close()
        self.engine.dispose()
        self.data_lock.release()
