#!/usr/bin/env python
"""GPU check of mean shift: the torch CUDA path (device="gpu") against the FAISS CPU path, same data, one run.

For a GPU host (CI never has one). Prints a markdown table: wall time of each path and the adjusted Rand index
between their labelings, for make_blobs sets of 50,000 x 2-d, 50,000 x 16-d, 1,000,000 x 16-d and
100,000 x 4096-d. Usage: python bench/gpu_paths.py [--skip-cpu-large]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simdex.defaults import quiet_openmp  # noqa: E402

quiet_openmp()  # before torch/faiss load: idle OpenMP threads sleep instead of spinning

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from simdex.estimators.meanshift import MeanShift  # noqa: E402

SETS = [(50_000, 2, 4.0), (50_000, 16, 6.0), (1_000_000, 16, 6.0), (100_000, 4096, 100.0)]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cpu-large", action="store_true", help="CPU path only on the 50k sets")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"- GPU: {dev}; torch {torch.__version__}; CPU cores {os.cpu_count()}\n")
    print("| n | d | bandwidth | CPU (FAISS) s | GPU (torch CUDA) s | speed-up | clusters CPU / GPU | ARI CPU vs GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for n, d, bw in SETS:
        X, _ = make_blobs(n_samples=n, n_features=d, centers=20, center_box=(-20 * (d ** 0.5) if d > 16 else -20,
                                                                              20 * (d ** 0.5) if d > 16 else 20),
                          random_state=0)
        X = X.astype(np.float32)
        timed(lambda X=X: MeanShift(bandwidth=bw, device="gpu").fit(X[:2000]))  # warm-up (CUDA context, kernels)
        t_g, g = timed(lambda X=X: MeanShift(bandwidth=bw, device="gpu").fit(X))
        if args.skip_cpu_large and n > 50_000:
            print(f"| {n:,} | {d} | {bw} | — | {t_g:.2f} | — | — / {len(g.cluster_centers_)} | — |", flush=True)
            continue
        t_c, c = timed(lambda X=X: MeanShift(bandwidth=bw, device="cpu").fit(X))
        print(f"| {n:,} | {d} | {bw} | {t_c:.2f} | {t_g:.2f} | {t_c / t_g:.1f}x | {len(c.cluster_centers_)} / "
              f"{len(g.cluster_centers_)} | {adjusted_rand_score(c.labels_, g.labels_):.4f} |", flush=True)


if __name__ == "__main__":
    main()
