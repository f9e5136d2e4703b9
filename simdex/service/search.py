"""Search: k-NN and range queries over one collection, from vectors, raw items (the collection's embedder) or
vectors of another space (through a projection head), restricted by a metadata filter; range answers are paged
with tokens this module issues and reads; the metadata of the hits on request."""
from __future__ import annotations

import numpy as np

from simdex.errors import InvalidArgument
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
    def __init__(self, collections: Collections, store: Store, embedders: Embedders, heads: Heads):
        self.collections, self.store, self.embedders, self.heads = collections, store, embedders, heads

    def search(self, name: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter=None, params: SearchParams = SearchParams(), page_size: int = 0,  # noqa: A002
               page_token: str = "", include_metadata: bool = False, head: str = "", images=(), texts=(),
               ) -> tuple[list[Hits], list[list[dict]] | None]:
        """k-NN (`k` best per query) or range (every hit better than `radius`, a page of them per query) search.
        Returns (one Hits per query, the metadata of each hit when asked, else None).

        `queries` (nq, d) float32; with `head`, a projection head into this collection, (nq, head dim) in its
        source space; with `images`/`texts` (and no queries), the collection's embedder makes the queries."""
        col = self.collections.get(name)
        xq = as_matrix(self._queries(col, queries, head, images, texts), "queries", col.info.dim)
        spec = filters.parse(filter)
        check_search_params(params)
        if radius is None:
            check_k(k)
            if page_token:
                raise InvalidArgument("page_token is only for range (radius) searches")
            hits = col.search(xq, k, params, spec)
        else:
            hits = self._range(col, xq, radius, params, spec, page_size, page_token)
        return hits, (self._metadata(col, hits) if include_metadata else None)

    def _queries(self, col: Collection, queries, head: str, images, texts):
        """The query vectors in the collection's space (not yet checked: as_matrix does that)."""
        if images or texts:
            if queries is not None or head:
                raise InvalidArgument("give either queries (vectors) or raw images/texts, not both")
            return self.embedders.queries(col, images, texts)
        if queries is None:
            raise InvalidArgument("search: give queries (vectors) or raw images/texts")
        return self.heads.project_queries(head, col.name, queries) if head else queries

    @staticmethod
    def _range(col: Collection, xq: np.ndarray, radius: float, params: SearchParams, spec: filters.Filter,
               page_size: int, page_token: str) -> list[Hits]:
        """One page of every query's range hits. A page token continues a single query from an offset."""
        if not np.isfinite(radius):
            raise InvalidArgument(f"radius must be finite, got {radius!r}")
        size = check_page_size(page_size)
        offset = 0
        if page_token:
            if len(xq) != 1:
                raise InvalidArgument("page_token continues a single query: send exactly that query")
            (offset,) = paging.decode(page_token, "offset")
        hits = col.search(xq, 0, params, spec, radius=float(radius))
        for h in hits:
            end = offset + size
            h.next_page_token = paging.encode(offset=end) if end < len(h.ids) else ""
            h.ids, h.distances, h.iids = h.ids[offset:end], h.distances[offset:end], h.iids[offset:end]
        return hits

    def _metadata(self, col: Collection, hits: list[Hits]) -> list[list[dict]]:
        """Each hit's metadata, read in one pass for every query's hits."""
        all_iids = np.concatenate([h.iids for h in hits]) if hits else np.zeros(0, np.int64)
        by_iid = self.store.metadata(col.info.id, np.unique(all_iids).tolist())
        return [[by_iid.get(int(i), {}) for i in h.iids] for h in hits]
