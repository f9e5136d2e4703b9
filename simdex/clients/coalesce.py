"""One client's concurrent small k-NN searches stacked into few Search RPCs (simdex.combining).

A team's service holds one `Client` and calls `search` from many threads, one query each. Each call is a whole
gRPC round trip: on both ends most of its CPU goes to the call (HTTP/2 frames, thread hand-offs, the messages),
not to the search. So while `slots` searches are in flight, further ones queue; the next caller to get a slot
sends every queued search of the same collection, k, dimension, filter, parameters and head as ONE request of
their rows and hands each caller its own answer. A lone caller sends at once (its cost: one lock), so one query's
latency does not change; under load, req/s rises with the queries each call carries. The server answers each
row as it would alone (FAISS searches the rows of a batch one by one; exact search may round the last bit of a
distance differently).

Errors: when a stacked call fails INVALID_ARGUMENT or RESOURCE_EXHAUSTED (a bad query, a message too large),
each of its callers repeats its own search alone, so that the error reaches only the caller it belongs to. Any
other error (the server unavailable after gRPC's retries, a deadline, a missing collection) is the whole call's,
and every caller of it gets it as it is, without repeating.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simdex.combining import Combiner
from simdex.errors import InvalidArgument, ResourceExhausted

ALONE = object()  # the answer of a stacked call that failed: make the search again, alone

# Only small searches are stacked: a few rows, a small k and dimension, no metadata, so that a stacked request
# and its answer stay far below any message limit.
MAX_ROWS = 4
MAX_K = 256
MAX_DIM = 16384
MAX_STACKED = 32  # searches per stacked call


def stackable(queries: np.ndarray | None, k: int, *, radius=None, page_token="", include_metadata=False,
              images=(), texts=(), **_) -> bool:
    """Whether a search may be stacked with others: k-NN of a few vectors, first page, no metadata."""
    return (queries is not None and radius is None and not page_token and not include_metadata and not images
            and not texts and len(queries) <= MAX_ROWS and 0 < k <= MAX_K and queries.shape[1] <= MAX_DIM)


class SearchCoalescer:
    """`search(key, xq)` -> `send(key, xq)`'s (hits, metas) for the rows of xq, from few `send` calls: requests
    with equal keys (collection, k, dimension, filter, params, head) share one."""

    def __init__(self, send: Callable, slots: int):
        self._send = send
        self._combiner = Combiner(self._serve, slots, max_batch=MAX_STACKED)

    def search(self, key, xq: np.ndarray):
        answer = self._combiner.submit(key, xq)
        return self._send(key, xq) if answer is ALONE else answer

    def _serve(self, key, rows: list) -> list:
        if len(rows) == 1:
            return [self._send(key, rows[0])]
        try:
            hits, metas = self._send(key, np.concatenate(rows))
        except (InvalidArgument, ResourceExhausted):  # may be one row's fault, or the stack's size: each alone
            return [ALONE] * len(rows)
        out, start = [], 0
        for q in rows:
            end = start + len(q)
            out.append((hits[start:end], metas[start:end] if metas is not None else None))
            start = end
        return out
