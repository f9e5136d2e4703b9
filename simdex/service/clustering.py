"""Mean shift over a collection's stored vectors: the job behind the Cluster RPC.

The vectors come from the database (the source of truth), optionally restricted by a metadata filter; cosine
collections are clustered as unit vectors, as their index holds them (squared L2 over unit vectors). Results are
kept for a few recent requests so that member labels can be paged without clustering again; a page token names
the collection sequence number it was computed at, and a later page of a changed collection is refused rather
than silently mixed.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from simdex.errors import FailedPrecondition, InvalidArgument
from simdex.estimators.meanshift import MeanShift
from simdex.index.backend import faiss
from simdex.limits import Limits
from simdex.service import paging
from simdex.service.collection import Collection
from simdex.store import filters
from simdex.store.items import Store
from simdex.types import Cluster, ClusterResult, ClusterSpec

DEFAULT_PAGE = 10_000     # member labels per page when the request names no page_size
MAX_PAGE = 1_000_000
CACHED_RESULTS = 4
CHUNK = 65_536


@dataclass
class Clustering:
    """One finished clustering, kept for paging: computed at collection sequence number `seq`."""
    seq: int
    clusters: list[Cluster]
    bandwidth: float
    n_iter: int
    ids: list[str]                # every clustered item
    labels: np.ndarray            # (n,) int32, -1 for none


def representatives(X: np.ndarray, centers: np.ndarray, labels: np.ndarray, r: int) -> list[np.ndarray]:
    """Row indices of the r members nearest each centre (nearest first), one array per cluster."""
    d2 = np.full(len(X), np.inf, dtype=np.float32)
    for i in range(0, len(X), CHUNK):
        lab = labels[i:i + CHUNK]
        ok = lab >= 0
        diff = X[i:i + CHUNK][ok] - centers[lab[ok]]
        d2[i:i + CHUNK][ok] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((d2, labels))          # by cluster, then distance
    starts = np.searchsorted(labels[order], np.arange(len(centers)))
    return [order[s:s + r] for s in starts]


def run(col: Collection, store: Store, spec: ClusterSpec, limits: Limits | None = None) -> Clustering:
    """Mean shift over the stored vectors of `col` (those matching the spec's filter); the vectors it would load
    are admitted against limits.max_cluster_mb first."""
    info, limits = col.info, limits or Limits()
    conds = filters.parse(spec.filter)
    seq, iids, ext = col.listing(conds)
    if not len(iids):
        raise FailedPrecondition(f"collection {info.name!r} has no items{' matching the filter' if conds else ''}"
                                 " to cluster")
    mb = len(iids) * info.dim * 4 / 2 ** 20
    if mb > limits.max_cluster_mb:
        raise limits.refuse("max_cluster_mb", f"{mb:,.1f} MB",
                            f"Cluster of {len(iids):,} vectors of dim {info.dim} in {info.name!r} (a filter clusters "
                            "fewer)")
    found, X = store.vectors(info.id, info.dim, iids)
    ext = [e for e, f in zip(ext, found) if f]  # deleted since listed: left out
    if info.metric == "cosine":
        faiss.normalize_L2(X)
    ms = MeanShift(bandwidth=spec.bandwidth, kernel=spec.kernel, bin_seeding=spec.bin_seeding,
                   min_bin_freq=spec.min_bin_freq, cluster_all=spec.cluster_all, max_iter=spec.max_iter,
                   max_seeds=spec.max_seeds, n_jobs=-1).fit(X)   # every core, as the server's FAISS searches
    labels = ms.labels_.astype(np.int32)
    centers = ms.cluster_centers_
    sizes = np.bincount(labels[labels >= 0], minlength=len(centers))
    reps = representatives(X, centers, labels, spec.representatives)
    clusters = [Cluster(c, int(sizes[c]), centers[c], [ext[j] for j in reps[c]]) for c in range(len(centers))]
    clusters.sort(key=lambda c: -c.size)
    return Clustering(seq, clusters, float(ms.bandwidth_), int(ms.n_iter_), ext, labels)


class ClusterJobs:
    """Runs clusterings and keeps the last few, keyed by collection and request, for paging."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._done: OrderedDict = OrderedDict()

    def cluster(self, col: Collection, store: Store, spec: ClusterSpec, page_size: int = 0,
                page_token: str = "") -> tuple[ClusterResult, str]:
        """-> (the clustering with one page of member ids and labels, next page token or "")."""
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be in 1..{MAX_PAGE}, got {page_size}")
        key = (col.info.id, json.dumps(asdict(spec), sort_keys=True))
        offset = 0
        with self._lock:
            result = self._done.get(key)
        if page_token:
            seq, offset = paging.decode(page_token, "seq", "offset", what=" for Cluster")
            if seq != col.seq:
                raise FailedPrecondition(f"collection {col.name!r} changed since the first page (seq {seq} -> "
                                         f"{col.seq}); start the clustering again")
        if result is None or result.seq != col.seq:
            result = run(col, store, spec, self.limits)
            with self._lock:
                self._done[key] = result
                self._done.move_to_end(key)
                while len(self._done) > CACHED_RESULTS:
                    self._done.popitem(last=False)
        return page(result, offset, size)


def page(result: Clustering, offset: int, size: int) -> tuple[ClusterResult, str]:
    """Members offset..offset+size of a kept clustering, with the token of the next page ("" after the last).
    Centres are copied: callers in this process must not reach the kept result."""
    end = min(offset + size, len(result.ids))
    clusters = [Cluster(c.label, c.size, c.center.copy(), list(c.representatives)) for c in result.clusters]
    out = ClusterResult(clusters, result.ids[offset:end], result.labels[offset:end].copy(), result.bandwidth,
                        result.n_iter, n_points=len(result.ids))
    return out, paging.encode(seq=result.seq, offset=end) if end < len(result.ids) else ""
