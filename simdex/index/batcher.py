"""Gather concurrent small k-NN searches into one FAISS call.

Handlers block on a future; one worker thread drains whatever queued up while the previous call ran,
stacks the queries that share search parameters, searches once with the largest k and hands each caller
its rows. No artificial wait: a lone request goes straight through.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import numpy as np

MAX_ROWS = 1024
_STOP = object()


class SearchBatcher:
    def __init__(self, run: Callable, name: str = "search-batcher"):
        self._run = run  # run(xq, k, params) -> (D, P)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def search(self, xq: np.ndarray, k: int, params):
        fut: Future = Future()
        self._q.put((xq, k, params, fut))
        return fut.result()

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch, rows = [item], len(item[0])
            while rows < MAX_ROWS:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._q.put(_STOP)
                    break
                batch.append(nxt)
                rows += len(nxt[0])
            groups: dict = {}
            for it in batch:
                groups.setdefault(it[2], []).append(it)
            for params, items in groups.items():
                self._serve(params, items)

    def _serve(self, params, items) -> None:
        try:
            xq = items[0][0] if len(items) == 1 else np.concatenate([it[0] for it in items])
            kmax = max(it[1] for it in items)
            D, P = self._run(xq, kmax, params)
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for it in items:
                it[3].set_exception(exc)
            return
        start = 0
        for q, k, _, fut in items:
            fut.set_result((D[start:start + len(q), :k], P[start:start + len(q), :k]))
            start += len(q)
