#!/usr/bin/env python
"""simdex MeanShift against scikit-learn's MeanShift: wall time, speed-up and agreement (ARI). A benchmark, not a test.

    .venv/bin/python bench/meanshift.py                               # full run (see the table for its duration)
    .venv/bin/python bench/meanshift.py --n 5000 --n-large 100000 --n-hd 5000 --sklearn-timeout 30   # quick run

One run, seeded data (make_blobs, float32), the SAME explicit bandwidth for both libraries (bandwidth estimation is
not timed). Tables:
 (a) 50,000 points in 2-d and 16-d: scikit-learn `MeanShift(bandwidth=bw, n_jobs=2)` with its default seeding
     (every point a seed) and with `bin_seeding=True`, then simdex `MeanShift(bandwidth=bw)` (1,000 sampled seeds,
     FAISS on the CPU). scikit-learn's cost is linear in its number of seeds (each seed climbs on its own), so a run
     whose predicted time exceeds --sklearn-timeout is NOT run in full: it is timed with 250 and 1,000 of its seeds
     (evenly spaced over its seed list), a line a + b * seeds is fitted and evaluated at the full seed count; the
     table says "extrapolated". ARI is against scikit-learn's labels from its largest completed run of the default
     mode (the full one, or the one seeded with 1,000 points when extrapolated: its modes and labels, not its time).
 (b) simdex alone at 1,000,000 x 16-d and 100,000 x 4096-d (ARI against the generating blobs).
 (c) the targets, each with met? A GPU column appears only when faiss or torch sees a GPU.
"""
from __future__ import annotations

from simdex.defaults import quiet_openmp

quiet_openmp()  # before faiss (or any OpenMP) loads: idle threads sleep instead of spinning

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from sklearn import cluster as skc  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from simdex.index.backend import NCPU, gpu_available  # noqa: E402
from simdex.estimators.meanshift import MeanShift, _torch_cuda, get_bin_seeds  # noqa: E402

BANDWIDTH = {2: 2.0, 16: 6.0, 4096: 100.0}  # clusters have std 1: the kernel covers a cluster's core


def blobs(n: int, d: int, centers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 points around `centers` centres uniform in [-20, 20]^d, std 1, and their blob labels.
    Generated in float32 chunks so that 100,000 x 4096 needs 1.6 GB, not make_blobs' float64 copy."""
    if n * d <= 50_000_000:
        X, y = make_blobs(n, n_features=d, centers=centers, cluster_std=1.0, center_box=(-20, 20),
                          random_state=seed)
        return X.astype("float32"), y
    rng = np.random.default_rng(seed)
    C = rng.uniform(-20, 20, (centers, d)).astype("float32")
    y = rng.integers(0, centers, n)
    X = np.empty((n, d), dtype="float32")
    for i0 in range(0, n, 10_000):
        X[i0:i0 + 10_000] = C[y[i0:i0 + 10_000]] + rng.standard_normal((min(10_000, n - i0), d), dtype="float32")
    return X, y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def sklearn_run(X, bw, bin_seeding, timeout):
    """(seconds, how, labels or None, n_clusters or None) of scikit-learn MeanShift(n_jobs=2)."""
    seeds = get_bin_seeds(X, bw) if bin_seeding else X
    full = dict(bandwidth=bw, bin_seeding=bin_seeding, n_jobs=2)
    if len(seeds) <= 1000:
        t, sk = timed(lambda: skc.MeanShift(**full).fit(X))
        return t, f"measured ({len(seeds):,} seeds)", sk.labels_, len(sk.cluster_centers_)
    pts = {}
    for s in (250, 1000):
        sub = seeds[np.linspace(0, len(seeds) - 1, s).astype(int)]
        pts[s] = timed(lambda sub=sub: skc.MeanShift(bandwidth=bw, seeds=sub, n_jobs=2).fit(X))
    b = (pts[1000][0] - pts[250][0]) / 750
    a = pts[250][0] - 250 * b
    predicted = a + b * len(seeds)
    if predicted <= timeout:
        t, sk = timed(lambda: skc.MeanShift(**full).fit(X))
        return t, f"measured ({len(seeds):,} seeds)", sk.labels_, len(sk.cluster_centers_)
    sk = pts[1000][1]
    return (predicted, f"**extrapolated** from 250 and 1,000 of its {len(seeds):,} seeds "
            f"({pts[250][0]:.1f} s, {pts[1000][0]:.1f} s)", sk.labels_, len(sk.cluster_centers_))


def compare_sklearn(args, gpu: bool) -> dict:
    """(a): scikit-learn's MeanShift (default and bin_seeding) against simdex's on 2-d and 16-d blobs; per d
    (sklearn default s, sklearn bin_seeding s, simdex s, ARI of simdex vs sklearn default)."""
    gcol = " simdex GPU s |" if gpu else ""
    print(f"## (a) {args.n:,} points: scikit-learn MeanShift(n_jobs=2) vs simdex MeanShift (CPU)\n")
    print(f"| d | method | wall s | how | simdex speed-up | clusters | ARI vs sklearn default |{gcol}")
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    results = {}
    for d in (2, 16):
        bw = BANDWIDTH[d]
        X, _ = blobs(args.n, d, args.centers, seed=d)
        t_def, how_def, ref, k_def = sklearn_run(X, bw, False, args.sklearn_timeout)
        t_bin, how_bin, lab_bin, k_bin = sklearn_run(X, bw, True, args.sklearn_timeout)
        t_ms, ms = timed(lambda bw=bw, X=X: _ms(bw, "cpu").fit(X))
        t_g = timed(lambda bw=bw, X=X: _ms(bw, "gpu").fit(X))[0] if gpu else None
        ari = adjusted_rand_score(ref, ms.labels_)
        results[d] = (t_def, t_bin, t_ms, ari)
        print(f"| {d} | sklearn default | {t_def:.1f} | {how_def} | {t_def / t_ms:.0f}x | {k_def} | 1 (reference) |"
              + (" |" if gpu else ""))
        print(f"| {d} | sklearn bin_seeding=True | {t_bin:.1f} | {how_bin} | {t_bin / t_ms:.1f}x | {k_bin} | "
              f"{adjusted_rand_score(ref, lab_bin):.4f} |" + (" |" if gpu else ""))
        print(f"| {d} | simdex (1,000 sampled seeds) | {t_ms:.2f} | measured, n_iter_={ms.n_iter_} | 1x | "
              f"{len(ms.cluster_centers_)} | {ari:.4f} |" + (f" {t_g:.2f} |" if gpu else ""))
    return results


def simdex_alone(args, gpu: bool) -> dict:
    """(b): simdex on the large 16-d set and the high-dimensional one; {(n, d): CPU seconds}."""
    gcol = " simdex GPU s |" if gpu else ""
    print(f"\n## (b) simdex alone\n\n| n | d | bandwidth | wall s | clusters | ARI vs blobs | n_iter_ |{gcol}")
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    large = {}
    for n, d in ((args.n_large, 16), (args.n_hd, args.dim_hd)):
        bw = BANDWIDTH.get(d, BANDWIDTH[4096])
        X, y = blobs(n, d, 20, seed=d + 1)
        t, ms = timed(lambda bw=bw, X=X: _ms(bw, "cpu").fit(X))
        t_g = timed(lambda bw=bw, X=X: _ms(bw, "gpu").fit(X))[0] if gpu else None
        large[(n, d)] = t
        print(f"| {n:,} | {d} | {bw} | {t:.1f} | {len(ms.cluster_centers_)} | "
              f"{adjusted_rand_score(y, ms.labels_):.4f} | {ms.n_iter_} |" + (f" {t_g:.2f} |" if gpu else ""))
        del X, y, ms
    return large


def targets(args, results: dict, large: dict) -> None:
    """(c): each target with its value and whether it was met."""
    print("\n## (c) targets\n\n| target | value | met? |\n|---|---|---|")
    for d, (t_def, t_bin, t_ms, ari) in results.items():
        print(f"| {d}-d: ARI vs sklearn >= 0.99 | {ari:.4f} | {'yes' if ari >= 0.99 else 'NO'} |")
        print(f"| {d}-d: >= 20x faster than sklearn default | {t_def / t_ms:.0f}x | "
              f"{'yes' if t_def / t_ms >= 20 else 'NO'} |")
        print(f"| {d}-d: faster than sklearn bin_seeding=True | {t_bin / t_ms:.1f}x | "
              f"{'yes' if t_bin > t_ms else 'NO'} |")
    if (args.n_large, 16) in large:
        t = large[(args.n_large, 16)]
        print(f"| {args.n_large:,} x 16-d under 120 s | {t:.1f} s | {'yes' if t < 120 else 'NO'} |")


def _ms(bw: float, device: str) -> MeanShift:
    return MeanShift(bandwidth=bw, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="points in the scikit-learn comparison sets")
    ap.add_argument("--centers", type=int, default=8)
    ap.add_argument("--n-large", type=int, default=1_000_000, help="points of the 16-d simdex-only set")
    ap.add_argument("--n-hd", type=int, default=100_000, help="points of the high-dimensional set")
    ap.add_argument("--dim-hd", type=int, default=4096)
    ap.add_argument("--sklearn-timeout", type=float, default=300.0,
                    help="seconds: a scikit-learn run predicted longer than this is extrapolated, not run")
    ap.add_argument("--skip-large", action="store_true", help="only the scikit-learn comparison")
    args = ap.parse_args()

    gpu = gpu_available() or _torch_cuda()
    print(f"# simdex mean shift benchmark\n\nmachine: {platform.processor() or platform.machine()}, {NCPU} cores; "
          f"GPU: {'yes' if gpu else 'no'}; data: make_blobs, {args.centers} centres in [-20, 20]^d, std 1, float32; "
          f"bandwidth (given to both): {BANDWIDTH}\n")
    results = compare_sklearn(args, gpu)
    large = {} if args.skip_large else simdex_alone(args, gpu)
    targets(args, results, large)


if __name__ == "__main__":
    main()
