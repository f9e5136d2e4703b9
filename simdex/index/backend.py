"""The FAISS import, with a clear message when neither extra is installed, and GPU detection."""
from __future__ import annotations

import functools
import os
import threading


def import_faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "simdex's server needs FAISS: install exactly one of the extras "
            "`pip install 'simdex[server,cpu]'` (faiss-cpu) or `pip install 'simdex[server,gpu]'` (faiss-gpu); "
            "never both, they overwrite each other's files"
        ) from exc
    return faiss


faiss = import_faiss()
NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# Single queries on one OpenMP thread: on 2 shared cores a 2-thread query under load was 20x slower here (FAISS
# splits a search by queries: one query leaves the other threads nothing to do but wake up).
# Below SMALL_BATCH queries, a search may be stacked with concurrent ones (service.collection's batcher).
SMALL_BATCH = 16


@functools.cache
def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU (asked once: every search reads it)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_omp = threading.local()  # the OpenMP thread count this thread last set (an ICV of the calling thread)


def set_threads_for(nq: int) -> None:
    """One OpenMP thread for a single query, every core for two or more (FAISS gives each thread whole queries:
    stacked searches from a client's coalescer, 8 threads, HNSW32 at 100k, went from 1,400 to 1,818 req/s with two
    threads instead of one), in the calling thread. Set only when it changes: the call into FAISS was 18% of a gRPC
    worker's Search samples under load (py-spy, 8 clients, before this cache). simdex changes FAISS's thread count
    only here."""
    n = 1 if nq == 1 else NCPU
    if getattr(_omp, "n", None) != n:
        faiss.omp_set_num_threads(n)
        _omp.n = n
