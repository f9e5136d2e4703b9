"""Gather concurrent small k-NN searches into few FAISS calls, with no hand-off to another thread.

Combining: each caller queues its request, then takes one of `slots` combiner slots (one per core by default,
since FAISS releases the GIL). A slot holder serves everything queued so far in one FAISS call per parameter set
(its own request included) and hands each waiting caller its rows; a caller whose request another combiner took
waits for that combiner's answer. A lone request is searched in its own thread at once; under load, the requests
that queued while the running calls ran are stacked into the next ones.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

import numpy as np


class SearchBatcher:
    """Stacks concurrent `search` calls into few `run(xq, k, key) -> (D, P)` calls; requests with equal keys
    (the same index and parameters) share one call. No thread of its own: nothing to start or close."""

    def __init__(self, run: Callable, slots: int = 1):
        self._run = run
        self._pending: deque = deque()
        self._queue_lock = threading.Lock()
        self._combiner = threading.BoundedSemaphore(max(1, slots))

    def search(self, xq: np.ndarray, k: int, key):
        """(nq, d) float32 queries -> (D (nq, k) float32, P (nq, k) int64), the rows of this request only."""
        fut: Future = Future()
        with self._queue_lock:
            self._pending.append((xq, k, key, fut))
        with self._combiner:
            if not fut.done():  # queued, or taken by a combiner still running (then the batch is empty)
                with self._queue_lock:
                    batch = list(self._pending)
                    self._pending.clear()
                groups: dict = {}
                for item in batch:
                    groups.setdefault(item[2], []).append(item)
                for key_, items in groups.items():
                    self._serve(key_, items)
        return fut.result()

    def _serve(self, key, items) -> None:
        try:
            xq = items[0][0] if len(items) == 1 else np.concatenate([it[0] for it in items])
            kmax = max(it[1] for it in items)
            D, P = self._run(xq, kmax, key)
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for it in items:
                it[3].set_exception(exc)
            return
        start = 0
        for q, k, _, fut in items:
            fut.set_result((D[start:start + len(q), :k], P[start:start + len(q), :k]))
            start += len(q)
