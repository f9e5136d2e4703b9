"""The domain API of a simdex server: every RPC is one call here. Servicers and Client.local() call it.

Inputs are validated here (one gate per entry), errors are simdex.errors classes, nothing partial is written.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simdex.errors import FailedPrecondition, InvalidArgument, NotFound
from simdex.service import clustering, heads, paging
from simdex.store import filters
from simdex.index.ann import Params, make_faiss_index
from simdex.service.collection import Collection, Hits
from simdex.store.heads import HeadRecord, HeadStore
from simdex.estimators.linear import project
from simdex.embedder import registry
from simdex.embedder.inputs import Embedded, embed_raw
from simdex.embedder.registry import EmbedderPool
from simdex.store.items import CollectionInfo, Store, check_metadata, make_engine, migrate
from simdex.wire import as_matrix, canonical_json, content_hash

LOG = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_ID_LEN = 512
MAX_K = 10_000
DEFAULT_PAGE = 1000
METRICS = ("l2", "ip", "cosine")
MAX_EMBED = 4096  # raw items per Embed call


@dataclass(frozen=True)
class CollectionStatus:
    name: str
    dim: int
    metric: str
    index: str
    count: int
    trained: bool
    seq: int
    created_unix_ms: int
    embedder: str = ""
    embedder_fingerprint: str = ""


@dataclass(frozen=True)
class EmbedderStatus:
    name: str
    modality: str
    dim: int
    description: str
    weights_present: bool
    weights_file: str
    fingerprint: str


def check_name(name: str, what: str = "collection") -> str:
    """Collection and head names: 1-128 of letters, digits, '_', '-', '.', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"{what} name {name!r} is invalid: 1-128 characters of letters, digits, '_', '-', '.', "
            "starting with a letter or digit")
    return name


def check_ids(ids, what: str = "ids", unique: bool = True) -> list[str]:
    ids = list(ids)
    if not ids:
        raise InvalidArgument(f"{what}: empty batch; give at least one id")
    for i, v in enumerate(ids):
        if not isinstance(v, str) or not v:
            raise InvalidArgument(f"{what}[{i}]: ids must be non-empty strings, got {v!r}")
        if len(v) > MAX_ID_LEN:
            raise InvalidArgument(f"{what}[{i}]: id longer than {MAX_ID_LEN} characters")
    if unique and len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(v for v in ids if v in seen or seen.add(v))
        raise InvalidArgument(f"{what}: id {dup!r} appears more than once in one request")
    return ids


class Simdex:
    """All collections of one data directory / database."""

    def __init__(self, data_dir: str | Path, db_url: str | None = None, snapshot_interval: float = 30.0,
                 embedders: EmbedderPool | None = None):
        self.data_dir = Path(data_dir)
        self.embedders = embedders or EmbedderPool()
        (self.data_dir / "indexes").mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{(self.data_dir / 'simdex.db').resolve()}"
        self.engine = make_engine(url)
        migrate(self.engine)
        self.store = Store(self.engine)
        self._lock = threading.Lock()
        self._cols: dict[str, Collection] = {}
        self._cluster_jobs = clustering.ClusterJobs()
        self.heads = HeadStore(self.store)
        for info in self.store.list_collections():
            self._cols[info.name] = self._open(info)
        self._stop = threading.Event()
        self._snapshotter = None
        if snapshot_interval > 0:
            self._snapshotter = threading.Thread(target=self._snapshot_loop, args=(snapshot_interval,),
                                                 name="snapshotter", daemon=True)
            self._snapshotter.start()

    def _open(self, info: CollectionInfo) -> Collection:
        col = Collection(info, self.store, self.data_dir / "indexes")
        col.open()
        return col

    def _col(self, name: str) -> Collection:
        check_name(name)
        col = self._cols.get(name)
        if col is None:
            raise NotFound(f"collection {name!r} not found")
        return col

    def _status(self, col: Collection) -> CollectionStatus:
        i = col.info
        fp = self.store.embedder_fingerprint(i.id) if i.embedder else ""
        return CollectionStatus(i.name, i.dim, i.metric, i.index, col.ann.n_live, col.ann.trained, col.seq,
                                i.created_unix_ms, i.embedder, fp)

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat",
                          embedder: str = "") -> CollectionStatus:
        check_name(name)
        metric = metric or "l2"
        index = index or "Flat"
        if metric not in METRICS:
            raise InvalidArgument(f"metric {metric!r} is not one of {list(METRICS)}")
        if embedder:
            espec = registry.spec(embedder)
            if dim and dim != espec.dim:
                raise InvalidArgument(f"dim {dim} does not match embedder {embedder!r}, which gives {espec.dim}-d "
                                      "vectors; leave dim out (0) to take the embedder's")
            dim = espec.dim
            registry.weights_path(embedder, self.embedders.weights.get(embedder))  # missing weights: fail now
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidArgument(f"dim must be a positive integer, got {dim!r}")
        make_faiss_index(dim, metric, index)  # validates dim, metric and description
        with self._lock:
            info = self.store.create_collection(name, dim, metric, index, embedder)
            col = self._open(info)
            self._cols[name] = col
        return self._status(col)

    def get_collection(self, name: str) -> CollectionStatus:
        return self._status(self._col(name))

    def list_collections(self) -> list[CollectionStatus]:
        return [self._status(c) for c in sorted(self._cols.values(), key=lambda c: c.name)]

    def delete_collection(self, name: str) -> None:
        with self._lock:
            col = self._col(name)
            with col.write_lock:
                self.store.delete_collection(name)
                del self._cols[name]
            col.close(remove_snapshot=True)

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, name: str, ids, vectors=None, metadata=(), hashes=(), *, images=(), texts=(),
               fingerprint: str = "") -> tuple[int, int]:
        """Store (n, d) float32 `vectors` (or raw `images`/`texts`, embedded by the collection's embedder) under
        `ids` in one transaction. Returns (n, seq).

        Vectors for an embedder-backed collection must name the `fingerprint` of the weights that made them."""
        col = self._col(name)
        ids = check_ids(ids)
        metas = check_metadata(list(metadata), len(ids))
        hashes = list(hashes)
        if hashes and len(hashes) != len(ids):
            raise InvalidArgument(f"content_hashes: got {len(hashes)} for {len(ids)} ids")
        raw = list(images) or list(texts)
        if raw:
            if vectors is not None:
                raise InvalidArgument("give either vectors or raw items (images, texts), not both")
            if len(raw) != len(ids):
                raise InvalidArgument(f"{len(raw)} raw items for {len(ids)} ids")
            e = embed_raw(self._embedder_of(col), images, texts, ids)
            xb, fingerprint = e.vectors, e.fingerprint
            metas = [{**e.metadata[i], **metas[i]} for i in range(len(ids))]  # the caller's keys win
            keys = [r if isinstance(r, bytes) else r.encode() for r in raw]
        else:
            if vectors is None:
                raise InvalidArgument("upsert: give vectors or raw items (images, texts)")
            xb = as_matrix(vectors, "vectors", col.info.dim)
            if len(xb) != len(ids):
                raise InvalidArgument(f"vectors: {len(xb)} rows for {len(ids)} ids")
            if col.info.embedder and not fingerprint:
                raise FailedPrecondition(
                    f"collection {name!r} is filled by embedder {col.info.embedder!r}: send raw items, or vectors "
                    "with the embedder_fingerprint of the weights that made them")
            keys = [xb[i].tobytes() for i in range(len(ids))]
        if fingerprint and not col.info.embedder:
            raise FailedPrecondition(f"collection {name!r} stores plain vectors; an embedder_fingerprint was sent")
        if not hashes:
            hashes = [content_hash(keys[i], canonical_json(metas[i])) for i in range(len(ids))]
        res = col.upsert(ids, xb, metas, hashes, fingerprint)
        return len(ids), res.seq

    # ---- embedders -----------------------------------------------------------------------------------------
    def _embedder_of(self, col: Collection):
        if not col.info.embedder:
            raise FailedPrecondition(f"collection {col.name!r} stores plain vectors (no embedder): send vectors, "
                                     "or create a collection with an embedder to send raw images or texts")
        return self.embedders.get(col.info.embedder)

    def list_embedders(self) -> list[EmbedderStatus]:
        return [EmbedderStatus(s.name, s.modality, s.dim, s.description, self.embedders.present(s.name),
                               self.embedders.where(s.name), self.embedders.loaded_fingerprint(s.name))
                for s in registry.specs()]

    def embed(self, embedder: str, images=(), texts=(), all_frames: bool = False) -> Embedded:
        registry.spec(embedder)
        n = len(images) + len(texts)
        if n > MAX_EMBED:
            raise InvalidArgument(f"embed: {n} items in one request, more than {MAX_EMBED}; send fewer per call")
        return embed_raw(self.embedders.get(embedder), images, texts, all_frames=all_frames)

    def translate(self, model: str, texts, beam: int = 1, max_len: int = 0) -> list[tuple[str, float]]:
        from simdex.embedder.seq2seq.serving import translate  # noqa: PLC0415 - torch model loads on demand

        return translate(model or "questions-fr-en", list(texts), beam, max_len)

    def delete(self, name: str, ids, ignore_missing: bool = False) -> tuple[int, int]:
        col = self._col(name)
        res = col.delete(check_ids(ids), ignore_missing)
        return len(res.removed_iids), res.seq

    def get(self, name: str, ids, with_vectors: bool = True, ignore_missing: bool = False):
        col = self._col(name)
        return self.store.get(col.info.id, col.info.dim, check_ids(ids, unique=False), with_vectors, ignore_missing)

    def count(self, name: str, filter=None) -> int:  # noqa: A002
        col = self._col(name)
        spec = filters.parse(filter)
        return col.ann.n_live if not spec else self.store.count(col.info.id, spec)

    def search(self, name: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter=None, params: Params = Params(), page_size: int = 0, page_token: str = "",  # noqa: A002
               include_metadata: bool = False, head: str = "", images=(), texts=(),
               ) -> tuple[list[Hits], list[list[dict]] | None]:
        """k-NN or range search. Returns (one Hits per query, metadata per hit when asked).

        With `head`, a projection head into this collection: queries are (nq, head dim) in its source space.
        With `images`/`texts` (and no queries), the collection's embedder makes the queries."""
        col = self._col(name)
        if images or texts:
            if queries is not None or head:
                raise InvalidArgument("give either queries (vectors) or raw images/texts, not both")
            queries = self._raw_queries(col, images, texts)
        elif queries is None:
            raise InvalidArgument("search: give queries (vectors) or raw images/texts")
        xq = self._through_head(head, name, queries) if head else queries
        xq = as_matrix(xq, "queries", col.info.dim)
        spec = filters.parse(filter)
        for key, v in (("nprobe", params.nprobe), ("efSearch", params.ef_search), ("k_factor", params.k_factor)):
            if not isinstance(v, int) or v < 0 or v > 1_000_000:
                raise InvalidArgument(f"params.{key} must be an integer in 0..1000000, got {v!r}")
        if radius is None:
            if not isinstance(k, int) or not 1 <= k <= MAX_K:
                raise InvalidArgument(f"k must be in 1..{MAX_K}, got {k!r}")
            if page_token:
                raise InvalidArgument("page_token is only for range (radius) searches")
            hits = col.search(xq, k, params, spec)
        else:
            if not np.isfinite(radius):
                raise InvalidArgument(f"radius must be finite, got {radius!r}")
            size = page_size or DEFAULT_PAGE
            if not 1 <= size <= 100_000:
                raise InvalidArgument(f"page_size must be in 1..100000, got {page_size}")
            offset = 0
            if page_token:
                if len(xq) != 1:
                    raise InvalidArgument("page_token continues a single query: send exactly that query")
                (offset,) = paging.decode(page_token, "offset")
            hits = col.search(xq, 0, params, spec, radius=float(radius))
            for h in hits:
                end = offset + size
                h.next_offset = end if end < len(h.ids) else None
                h.ids, h.distances, h.iids = h.ids[offset:end], h.distances[offset:end], h.iids[offset:end]
        metas = None
        if include_metadata:
            all_iids = np.concatenate([h.iids for h in hits]) if hits else np.zeros(0, np.int64)
            by_iid = self.store.metadata(col.info.id, np.unique(all_iids).tolist())
            metas = [[by_iid.get(int(i), {}) for i in h.iids] for h in hits]
        return hits, metas

    def _raw_queries(self, col: Collection, images, texts) -> np.ndarray:
        e = embed_raw(self._embedder_of(col), images, texts)
        fp = self.store.embedder_fingerprint(col.info.id)
        if fp and fp != e.fingerprint:
            raise FailedPrecondition(
                f"collection {col.name!r} was filled with embedder weights {fp}, but {col.info.embedder!r} is now "
                f"loaded with {e.fingerprint}; refill the collection or serve the original weights")
        return e.vectors

    def cluster(self, name: str, spec: clustering.ClusterSpec, page_size: int = 0, page_token: str = ""):
        """Mean shift over the collection (or its filtered items). -> (Clustering, start, end, next token)."""
        return self._cluster_jobs.cluster(self._col(name), self.store, spec, page_size, page_token)

    # ---- heads (simdex.service.heads) --------------------------------------------------------------------------
    def train_head(self, spec: heads.HeadSpec) -> HeadRecord:
        """Train and store a new version of head `spec.head` (the old version serves until it is committed)."""
        spec = heads.check_spec(spec)
        col = self._col(spec.collection)
        fp = self.store.embedder_fingerprint(col.info.id)
        target = self._col(spec.target_collection) if spec.kind == "projection" else None
        self.heads.check_free(HeadRecord(spec.head, col.name, spec.kind, [], {}, {}, 0, fp, 0, 0,
                                         collection_id=col.info.id, target_id=target.info.id if target else None))
        if target is not None:
            rec = heads.train_projection(col, target, self.store, spec,
                                         (fp, self.store.embedder_fingerprint(target.info.id)))
        else:
            rec = heads.train_classifier(col, self.store, spec, fp)
        rec = self.heads.save(rec)
        LOG.info("head %s v%d (%s on %s) trained: %s", rec.name, rec.version, rec.kind, rec.collection,
                 {k: v for k, v in rec.metrics.items() if k != "confusion"})
        return rec

    def get_head(self, name: str) -> HeadRecord:
        return self.heads.get(check_name(name, "head"))

    def list_heads(self, collection: str = "") -> list[HeadRecord]:
        return self.heads.list(self._col(collection).info.id if collection else None)

    def delete_head(self, name: str) -> int:
        return self.heads.delete(check_name(name, "head"))

    def predict(self, name: str, ids=None, vectors=None, images=(), texts=()) -> heads.Prediction:
        """Run the latest version of head `name` on items of its collection (`ids`) or (n, dim) float32 `vectors`."""
        rec = self.heads.get(check_name(name, "head"), with_weights=True)
        if images or texts:
            if ids or vectors is not None:
                raise InvalidArgument("predict: give exactly one of ids, vectors or raw images/texts")
            e = embed_raw(self._embedder_of(self._col(rec.collection)), images, texts)
            if rec.embedder_fingerprint and e.fingerprint != rec.embedder_fingerprint:
                raise FailedPrecondition(f"head {name!r} was trained on vectors of weights "
                                         f"{rec.embedder_fingerprint}; the loaded embedder has {e.fingerprint}")
            heads.check_fresh(rec, self.store)
            return heads.apply(rec, e.vectors)
        ids = list(ids or [])
        if bool(ids) == (vectors is not None):
            raise InvalidArgument("predict: give exactly one of ids or vectors")
        heads.check_fresh(rec, self.store)
        if ids:
            col = self._col(rec.collection)
            X = np.stack([r.vector for r in self.store.get(col.info.id, col.info.dim, check_ids(ids, unique=False))])
        else:
            X = as_matrix(vectors, "vectors", rec.dim)
        return heads.apply(rec, X)

    def _through_head(self, head: str, collection: str, queries) -> np.ndarray:
        rec = self.heads.get(check_name(head, "head"), with_weights=True)
        if rec.kind != "projection":
            raise InvalidArgument(f"head {head!r} is a {rec.kind} head; searching through a head needs a projection")
        if rec.target_collection != collection:
            raise InvalidArgument(f"head {head!r} maps {rec.collection!r} into {rec.target_collection!r}, "
                                  f"not into {collection!r}")
        heads.check_fresh(rec, self.store)
        return project(as_matrix(queries, "queries", rec.dim), rec.coef, rec.intercept)

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def snapshot(self) -> int:
        """Snapshot every collection that changed. Returns how many files were written."""
        written = 0
        for col in list(self._cols.values()):
            try:
                written += col.save_snapshot()
            except OSError as exc:
                LOG.warning("snapshot of %s failed: %s", col.name, exc)
        return written

    def _snapshot_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.snapshot()

    def close(self) -> None:
        self._stop.set()
        if self._snapshotter:
            self._snapshotter.join(timeout=10)
        self.snapshot()
        for col in self._cols.values():
            col.close()
        self.engine.dispose()
