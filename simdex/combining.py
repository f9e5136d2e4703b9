"""Gather concurrent small requests into few calls, with no thread of its own and no hand-off to another thread.

Combining: each caller queues its request, then takes one of `slots` combiner slots. A slot holder serves
everything queued so far, one call per key (its own request included), and hands each waiting caller its
answer; a caller whose request another combiner took waits for that combiner's answer. A lone request is served
in its own thread at once, so one caller pays only a lock; under load, the requests that queued while the running
calls ran are stacked into the next ones.

Used twice: the server's index stacks concurrent k-NN searches into one FAISS call (simdex.index.batcher), and the
Python client stacks its threads' concurrent single-query searches into one Search RPC (simdex.clients.coalesce).
A light module: numpy-free, imports nothing of simdex.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Hashable, Sequence


class _Request:
    """One queued request: its key and value, then its answer or error; `wake` is set when it is answered or
    when its caller is to become a combiner."""
    __slots__ = ("key", "value", "taken", "done", "answer", "error", "wake")

    def __init__(self, key, value):
        self.key, self.value = key, value
        self.taken = self.done = False  # changed under the combiner's lock
        self.answer = self.error = None
        self.wake = threading.Event()


class Combiner:
    """`submit(key, request)` -> its answer, from `serve(key, requests) -> answers` (one per request, in order),
    called with every request of that key queued meanwhile. When `serve` raises, every request it was given gets
    the error. `max_batch` bounds the requests of one call (the rest wait for the next).

    Each waiting caller sleeps on its own event: a finished call wakes the callers it answered and, when requests
    are still queued, the oldest one's caller to take the slot it gave back (not every waiting thread)."""

    def __init__(self, serve: Callable[[Any, Sequence], Sequence], slots: int = 1, max_batch: int = 0):
        self._serve = serve
        self._pending: deque[_Request] = deque()
        self._lock = threading.Lock()  # guards _pending, _free and each request's taken / done
        self._free = max(1, slots)
        self._max_batch = max_batch

    def submit(self, key: Hashable, value) -> Any:
        req = _Request(key, value)
        with self._lock:
            self._pending.append(req)
        while True:
            with self._lock:
                if req.done:
                    break
                if req.taken or not self._free:  # another combiner has it, or no slot: wait to be woken
                    req.wake.clear()
                    batch = None
                else:
                    self._free -= 1
                    batch = self._take()
            if batch is None:
                req.wake.wait()
                continue
            try:
                groups: dict = {}
                for r in batch:
                    groups.setdefault(r.key, []).append(r)
                for key_, rs in groups.items():
                    self._run(key_, rs)
            finally:
                with self._lock:
                    self._free += 1
                    nxt = self._pending[0] if self._pending else None  # queued: not yet taken
                if nxt is not None:
                    nxt.wake.set()
        if req.error is not None:
            raise req.error
        return req.answer

    def _take(self) -> list[_Request]:
        """Under the lock: the queued requests (at most max_batch, oldest first), marked taken."""
        n = len(self._pending) if not self._max_batch else min(self._max_batch, len(self._pending))
        batch = [self._pending.popleft() for _ in range(n)]
        for r in batch:
            r.taken = True
        return batch

    def _run(self, key, rs: list[_Request]) -> None:
        try:
            answers = self._serve(key, [r.value for r in rs])
            if len(answers) != len(rs):
                raise RuntimeError(f"serve answered {len(answers)} of {len(rs)} requests")
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            answers, error = [None] * len(rs), exc
        else:
            error = None
        with self._lock:
            for r, answer in zip(rs, answers):
                r.answer, r.error, r.done = answer, error, True
        for r in rs:
            r.wake.set()
