"""Search: k-NN and range queries over one collection, from vectors, raw items (the collection's embedder) or
vectors of another space (through a projection head), restricted by a metadata filter; range answers are paged
with tokens this module issues and reads; the metadata of the hits on request.

Budgets (`simdex.limits`): a k-NN search holds nq x k hits, checked before any work; a range search counts every
hit it finds while it runs and keeps only the page it answers with (each query's best offset + page_size).
"""
from __future__ import annotations

import numpy as np

from simdex.errors import InvalidArgument
from simdex.limits import Limits
from simdex.service import paging
from simdex.service.collection import Collection, Hits
from simdex.service.collections import Collections
from simdex.service.embedding import Embedders
from simdex.service.heads import Heads
from simdex.service.validation import check_k, check_page_size, check_search_params
from simdex.store import filters
from simdex.store.items import Store
from simdex.types import SearchParams
from simdex.wire import as_matrix


class Search:
    def __init__(self, collections: Collections, store: Store, embedders: Embedders, heads: Heads,
                 limits: Limits | None = None):
        self.collections, self.store, self.embedders, self.heads = collections, store, embedders, heads
        self.limits = limits or Limits()

    def search(self, name: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter=None, params: SearchParams = SearchParams(), page_size: int = 0,  # noqa: A002
               page_token: str = "", include_metadata: bool = False, head: str = "", images=(), texts=(),
               ) -> tuple[list[Hits], list[list[dict]] | None]:
        """k-NN (`k` best per query) or range (every hit better than `radius`, a page of them per query) search.
        Returns (one Hits per query, the metadata of each hit when asked, else None).

        `queries` (nq, d) float32; with `head`, a projection head into this collection, (nq, head dim) in its
        source space; with `images`/`texts` (and no queries), the collection's embedder makes the queries."""
        col = self.collections.get(name)
        check_search_params(params, col.ann.knobs, col.info.index)
        if radius is None:
            check_k(k)
            if page_token:
                raise InvalidArgument("page_token is only for range (radius) searches")
            self._check_knn_budget(_count_queries(queries, images, texts), k, include_metadata)
        xq = as_matrix(self._queries(col, queries, head, images, texts), "queries", col.info.dim)
        spec = filters.parse(filter)
        if radius is None:
            hits = col.search(xq, k, params, spec)
        else:
            hits = self._range(col, xq, radius, params, spec, page_size, page_token)
        return hits, (self._metadata(col, hits) if include_metadata else None)

    def _check_metadata_budget(self, n: int, what: str) -> None:
        if n > self.limits.max_search_metadata:
            raise self.limits.refuse("max_search_metadata", f"{n} hits", what)

    def _queries(self, col: Collection, queries, head: str, images, texts):
        """The query vectors in the collection's space (not yet checked: as_matrix does that)."""
        if images or texts:
            if queries is not None or head:
                raise InvalidArgument("give either queries (vectors) or raw images/texts, not both")
            return self.embedders.queries(col, images, texts)
        if queries is None:
            raise InvalidArgument("search: give queries (vectors) or raw images/texts")
        return self.heads.project_queries(head, col.name, queries) if head else queries

    def _check_knn_budget(self, nq: int, k: int, include_metadata: bool) -> None:
        """nq x k hits against max_search_results (and max_search_metadata with metadata), before any work (the
        Python client halves the queries and retries)."""
        what = f"k-NN search of {nq} queries with k={k}; send fewer queries per call"
        if nq * k > self.limits.max_search_results:
            raise self.limits.refuse("max_search_results", f"{nq} x {k} = {nq * k} hits", what)
        if include_metadata:
            self._check_metadata_budget(nq * k, f"{what} (with include_metadata)")

    def _range(self, col: Collection, xq: np.ndarray, radius: float, params: SearchParams, spec: filters.Filter,
               page_size: int, page_token: str) -> list[Hits]:
        """One page of every query's range hits. A page token continues a single query from an offset. Only the
        page is kept: each query's best offset + size + 1 hits (the one past the page says whether another
        follows), while every hit found counts against the budget."""
        if not np.isfinite(radius):
            raise InvalidArgument(f"radius must be finite, got {radius!r}")
        size = check_page_size(page_size)
        offset = 0
        if page_token:
            if len(xq) != 1:
                raise InvalidArgument("page_token continues a single query: send exactly that query")
            (offset,) = paging.decode(page_token, "offset")
        end = offset + size
        hits = col.search(xq, 0, params, spec, radius=float(radius), keep=end + 1, limits=self.limits)
        for h in hits:
            h.next_page_token = paging.encode(offset=end) if end < len(h.ids) else ""
            h.ids, h.distances, h.iids = h.ids[offset:end], h.distances[offset:end], h.iids[offset:end]
        return hits

    def _metadata(self, col: Collection, hits: list[Hits]) -> list[list[dict]]:
        """Each hit's metadata, read in one pass for every query's hits (each item's once: hits of the same item
        share one dict), at most max_search_metadata hits."""
        self._check_metadata_budget(sum(len(h.ids) for h in hits), "search answer with include_metadata; "
                                    "ask for a smaller page_size or fewer queries per call")
        all_iids = np.concatenate([h.iids for h in hits]) if hits else np.zeros(0, np.int64)
        by_iid = self.store.metadata(col.info.id, np.unique(all_iids).tolist())
        return [[by_iid.get(int(i), {}) for i in h.iids] for h in hits]


def _count_queries(queries, images, texts) -> int:
    """How many queries a search names, read before anything is made of them (raw items, vectors or rows)."""
    if images or texts:
        return len(images) + len(texts)
    try:
        shape = np.shape(queries) if queries is not None else (0,)
    except ValueError:  # ragged rows: as_matrix names the fault later
        return len(queries)
    return int(shape[0]) if len(shape) > 1 else 1
