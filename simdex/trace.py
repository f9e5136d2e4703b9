"""Per-stage timing of Search calls, switched on with SIMDEX_TRACE=1: where one query's time goes on the server.

A traced call runs `begin()`, then `mark(stage)` after each stage (the time since the previous mark is charged to
`stage`, so the stages add up to the call), then `end()`. The stages of a k-NN Search, in order: unpack (proto ->
arguments), validation (the service's checks, the filter's SQL when there is one, the queries' preparation), lock
wait (the index's read lock), faiss, batch wait (a stacked search waiting for its combiner), id mapping (positions
-> ids), response (hits -> proto). Each thread traces its own call (one gRPC worker runs one call at a time).
Every LOG_EVERY calls the per-stage p50 / p99 / mean are logged (logger `simdex.trace`, INFO) and start afresh.

Off by default, and then free: `ON` is read once at import and every call site tests it before calling in.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

ON = os.environ.get("SIMDEX_TRACE", "") not in ("", "0")
LOG_EVERY = 2000
LOG = logging.getLogger("simdex.trace")

_local = threading.local()
_lock = threading.Lock()
_calls: list[dict[str, int]] = []  # the finished calls since the last summary: stage -> nanoseconds


def begin() -> None:
    """Start timing this thread's call."""
    _local.stages = {}
    _local.last = time.perf_counter_ns()


def mark(stage: str) -> None:
    """Charge the time since the previous mark (or begin) to `stage`; nothing when no call is being traced."""
    stages = getattr(_local, "stages", None)
    if stages is None:
        return
    now = time.perf_counter_ns()
    stages[stage] = stages.get(stage, 0) + now - _local.last
    _local.last = now


def end() -> None:
    """Finish this thread's call: add it to the aggregate, and log the summary every LOG_EVERY calls."""
    stages = getattr(_local, "stages", None)
    _local.stages = None
    if stages is None:
        return
    with _lock:
        _calls.append(stages)
        if len(_calls) < LOG_EVERY:
            return
        done = _calls[:]
        _calls.clear()
    LOG.info("search stages over %d calls: %s", len(done), format_summary(summary(done)))


def summary(calls: list[dict[str, int]]) -> dict[str, tuple[float, float, float]]:
    """stage -> (p50, p99, mean) microseconds over `calls` (a call that skipped a stage counts 0 for it), in the
    order the stages first appear, plus "total"."""
    names = list(dict.fromkeys(s for c in calls for s in c))
    out = {}
    for name in [*names, "total"]:
        us = np.array([sum(c.values()) if name == "total" else c.get(name, 0) for c in calls]) / 1e3
        out[name] = (float(np.percentile(us, 50)), float(np.percentile(us, 99)), float(us.mean()))
    return out


def format_summary(s: dict[str, tuple[float, float, float]]) -> str:
    """'stage p50/p99/mean us, ...' on one line."""
    return ", ".join(f"{name} {p50:.1f}/{p99:.1f}/{mean:.1f} us" for name, (p50, p99, mean) in s.items())
