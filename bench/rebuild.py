"""What reopening a collection without its snapshot costs: FAISS index builds (make_faiss_index calls) and time.

Usage: python bench/rebuild.py [--n 3000] [--dim 16] [DESC ...]   (prints a markdown table)
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from simdex.defaults import quiet_openmp

quiet_openmp()

import numpy as np  # noqa: E402

from simdex.index import ann  # noqa: E402
from simdex.service.facade import Simdex  # noqa: E402


def reopen(desc: str, n: int, dim: int) -> tuple[int, float, bool]:
    """(index builds, seconds, trained) of opening a collection of `n` vectors whose snapshot is gone."""
    data = Path(tempfile.mkdtemp())
    try:
        s = Simdex(data, snapshot_interval=0)
        s.create_collection("c", dim, index=desc)
        x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
        s.upsert("c", [f"v{i}" for i in range(n)], x)
        s.close()
        shutil.rmtree(data / "indexes")
        (data / "indexes").mkdir()
        builds, make = [0], ann.make_faiss_index

        def counted(*a, **k):
            builds[0] += 1
            return make(*a, **k)

        ann.make_faiss_index = counted
        try:
            t = time.perf_counter()
            s = Simdex(data, snapshot_interval=0)
            dt = time.perf_counter() - t
        finally:
            ann.make_faiss_index = make
        trained = s.get_collection("c").trained
        s.close()
        return builds[0], dt, trained
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("descs", nargs="*", default=["IVF64,Flat", "IVF65536,Flat", "IVF262144,Flat"])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--dim", type=int, default=16)
    a = p.parse_args()
    print(f"| index ({a.n} x {a.dim}) | builds on reopen | reopen ms | trained |\n|---|---|---|---|")
    for desc in a.descs:
        builds, dt, trained = reopen(desc, a.n, a.dim)
        print(f"| {desc} | {builds} | {dt * 1000:.0f} | {trained} |")


if __name__ == "__main__":
    main()
