"""Measurement helpers of bench/search.py: timed calls, paths taking turns, client threads, CPU seconds, and the
markdown tables the numbers are printed in."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

THREADS = 8


def time_calls(fn, queries: np.ndarray, seconds: float, warmup: int = 10) -> list[int]:
    """Nanoseconds of each fn(q) over one-row queries, back to back, for `seconds`."""
    nq = len(queries)
    for i in range(warmup):
        fn(queries[i % nq: i % nq + 1])
    out = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    i = 0
    while True:
        q = queries[i % nq: i % nq + 1]
        t0 = time.perf_counter_ns()
        fn(q)
        t1 = time.perf_counter_ns()
        out.append(t1 - t0)
        i += 1
        if t1 > deadline:
            return out


def interleaved(fns: dict, queries: np.ndarray, seconds: float, rounds: int = 6) -> dict:
    """Per-call seconds of each path: back-to-back calls (a path's own steady state) in `rounds` short windows,
    the paths taking turns, so that drift on a shared machine hits every path alike."""
    out: dict = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            out[name] += time_calls(fn, queries[r * 97 % len(queries):], seconds / rounds)
    return {name: np.asarray(v, dtype=np.float64) * 1e-9 for name, v in out.items()}


class omp_threads:
    """faiss.omp_set_num_threads(n) for the calling thread (an OpenMP ICV), restored on exit."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import faiss

        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        import faiss

        faiss.omp_set_num_threads(self.before)


def throughput(make_fn, queries: np.ndarray, seconds: float, threads: int = THREADS, warmup: int = 20):
    """(requests completed, seconds) by `threads` threads, each calling its own make_fn() one query at a time.

    make_fn runs in the worker thread: FAISS's OpenMP thread count (omp_set_num_threads) is per calling thread.
    make_fn may return (fn, close)."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()
    nq = len(queries)

    def worker(j: int) -> None:
        made = make_fn()
        fn, close = made if isinstance(made, tuple) else (made, None)
        i = j * 97
        for _ in range(warmup):
            fn(queries[i % nq: i % nq + 1])
            i += 1
        start.wait()
        c = 0
        while not stop.is_set():
            fn(queries[i % nq: i % nq + 1])
            i += 1
            c += 1
        counts[j] = c
        if close:
            close()

    ts = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts), time.perf_counter() - t0  # the calls in flight at `stop` finish inside the window


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process `pid` (None: this process), all threads."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def us(seconds: float) -> str:
    v = seconds * 1e6
    return f"{v:,.0f} µs" if abs(v) >= 100 else f"{v:,.1f} µs"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"
