"""Gather concurrent small k-NN searches into few FAISS calls, with no hand-off to another thread.

Combining (simdex.combining): each caller queues its request, then takes one of `slots` combiner slots (one per
core by default, since FAISS releases the GIL). A slot holder serves everything queued so far in one FAISS call
per parameter set (its own request included) and hands each waiting caller its rows; a caller whose request
another combiner took waits for that combiner's answer. A lone request is searched in its own thread at once;
under load, the requests that queued while the running calls ran are stacked into the next ones.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simdex.combining import Combiner


class SearchBatcher:
    """Stacks concurrent `search` calls into few `run(xq, k, key) -> (D, P)` calls; requests with equal keys
    (the same index and parameters) share one call. No thread of its own: nothing to start or close."""

    def __init__(self, run: Callable, slots: int = 1):
        self._run = run
        self._combiner = Combiner(self._serve, slots)

    def search(self, xq: np.ndarray, k: int, key):
        """(nq, d) float32 queries -> (D (nq, k) float32, P (nq, k) int64), the rows of this request only."""
        return self._combiner.submit(key, (xq, k))

    def _serve(self, key, requests) -> list:
        xq = requests[0][0] if len(requests) == 1 else np.concatenate([q for q, _ in requests])
        D, P = self._run(xq, max(k for _, k in requests), key)
        out, start = [], 0
        for q, k in requests:
            out.append((D[start:start + len(q), :k], P[start:start + len(q), :k]))
            start += len(q)
        return out
