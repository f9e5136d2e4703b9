"""The FAISS import, with a clear message when neither extra is installed, and GPU detection."""
from __future__ import annotations

import os


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
# Single queries on one OpenMP thread: on 2 shared cores a 2-thread query under load was 20x slower here.
SMALL_BATCH = 16


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def set_threads_for(nq: int) -> None:
    faiss.omp_set_num_threads(1 if nq < SMALL_BATCH else NCPU)
