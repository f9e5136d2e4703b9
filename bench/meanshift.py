#!/usr/bin/env python
"""simdex MeanShift against scikit-learn's MeanShift: wall time, speed-up and agreement (ARI). A benchmark, not a test.

    .venv/bin/python bench/meanshift.py                          # 2-d, 8-d, 16-d at 50k and 200k points (~3 min)
    .venv/bin/python bench/meanshift.py --n 20000 --dims 2,16    # a quick run
    .venv/bin/python bench/meanshift.py --large                  # also simdex alone at 1M x 16-d, 100k x 4096-d

One run, seeded data (8 blobs of std 1, centres uniform in [-20, 20]^d, float32), the SAME explicit bandwidth for
both libraries (bandwidth estimation is not timed), both on the same threads (n_jobs, default 2). Per (n, d):
  - scikit-learn default (every point a seed): its cost is linear in its number of seeds (each seed climbs on its
    own), so it is timed with 200 and 800 of its seeds (evenly spaced over X), a line a + b * seeds is fitted and,
    when the full run would take longer than --sklearn-timeout, evaluated at n seeds: "extrapolated";
  - scikit-learn bin_seeding=True: run in full when the same line predicts it within --sklearn-timeout, else
    extrapolated from that line at its number of bin seeds;
  - simdex MeanShift(bandwidth=bw, n_jobs) (max_seeds=1000 sampled seeds; the kd-tree neighbour search), measured,
    and again with n_jobs=1 (in parentheses: on a loaded 2-core machine one thread can be the faster).
ARI is against scikit-learn's default labels from its 800-seed run (its modes; every point labelled by the nearest,
as the full run does). The targets table says, per row, whether simdex is >= 20x scikit-learn's default, faster
than its bin_seeding=True, and at ARI >= 0.99. A GPU column appears when faiss or torch sees a GPU.
"""
from __future__ import annotations

from simdex.defaults import quiet_openmp

quiet_openmp()  # before faiss (or any OpenMP) loads: idle threads sleep instead of spinning

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn import cluster as skc  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from simdex.estimators.meanshift import MeanShift, _torch_cuda, get_bin_seeds  # noqa: E402
from simdex.index.backend import NCPU, gpu_available  # noqa: E402

BANDWIDTH = {2: 2.0, 8: 4.0, 16: 6.0, 4096: 100.0}  # clusters have std 1: the kernel covers a cluster's core
PROBE_SEEDS = (200, 800)


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


def sklearn_runs(X, bw, n_jobs, timeout) -> dict:
    """scikit-learn's default and bin_seeding=True on X: {mode: (seconds, how, labels or None)}."""
    probes = {s: timed(lambda s=s: skc.MeanShift(bandwidth=bw, n_jobs=n_jobs,
                                                 seeds=X[np.linspace(0, len(X) - 1, s).astype(int)]).fit(X))
              for s in PROBE_SEEDS}
    (s1, (t1, _)), (s2, (t2, ref)) = probes.items()
    b = (t2 - t1) / (s2 - s1)
    a = t1 - s1 * b
    out = {}
    for mode, seeds in (("default", len(X)), ("bin_seeding=True", len(get_bin_seeds(X, bw)))):
        predicted = a + b * seeds
        if predicted <= timeout:
            t, sk = timed(lambda mode=mode: skc.MeanShift(bandwidth=bw, n_jobs=n_jobs,
                                                          bin_seeding=mode != "default").fit(X))
            out[mode] = (t, f"measured ({seeds:,} seeds)", sk.labels_)
        else:
            out[mode] = (predicted, f"**extrapolated** to {seeds:,} seeds from {s1} and {s2} of them "
                                    f"({t1:.1f} s, {t2:.1f} s)", None)
    out["reference"] = (t2, f"{s2} seeds", ref.labels_)
    return out


def compare(args, gpu: bool) -> list[dict]:
    """The comparison table, one block of rows per (n, d); returns the numbers of each block."""
    gcol = " simdex GPU s |" if gpu else ""
    print(f"## scikit-learn MeanShift(n_jobs={args.n_jobs}) vs simdex MeanShift(n_jobs={args.n_jobs}, CPU)\n")
    print(f"| n | d | method | wall s | how | simdex speed-up | clusters | ARI vs sklearn default |{gcol}")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    rows = []
    for n in args.n:
        for d in args.dims:
            bw = BANDWIDTH[d]
            X, _ = blobs(n, d, args.centers, seed=d)
            sk = sklearn_runs(X, bw, args.n_jobs, args.sklearn_timeout)
            t_ms, ms = timed(lambda X=X, bw=bw: MeanShift(bandwidth=bw, n_jobs=args.n_jobs, device="cpu").fit(X))
            t_1 = timed(lambda X=X, bw=bw: MeanShift(bandwidth=bw, n_jobs=1, device="cpu").fit(X))[0]
            t_g = timed(lambda X=X, bw=bw: MeanShift(bandwidth=bw, device="gpu").fit(X))[0] if gpu else None
            ref = sk["reference"][2]
            ari = adjusted_rand_score(ref, ms.labels_)
            g = " |" if gpu else ""
            for mode in ("default", "bin_seeding=True"):
                t, how, labels = sk[mode]
                agree = "1 (reference)" if mode == "default" else (
                    f"{adjusted_rand_score(ref, labels):.4f}" if labels is not None else "-")
                print(f"| {n:,} | {d} | sklearn {mode} | {t:.1f} | {how} | {t / t_ms:.1f}x | "
                      f"{len(set(ref.tolist())) if mode == 'default' else '-'} | {agree} |{g}")
            print(f"| {n:,} | {d} | simdex | {t_ms:.2f} | measured, {min(n, 1000):,} seeds, n_iter_={ms.n_iter_} "
                  f"(n_jobs=1: {t_1:.2f} s) | 1x | {len(ms.cluster_centers_)} | {ari:.4f} |"
                  + (f" {t_g:.2f} |" if gpu else ""))
            rows.append(dict(n=n, d=d, t_def=sk["default"][0], t_bin=sk["bin_seeding=True"][0], t_ms=t_ms, ari=ari))
    return rows


def targets(rows: list[dict]) -> None:
    print("\n## targets\n\n| n | d | >= 20x sklearn default | faster than bin_seeding=True | ARI >= 0.99 |")
    print("|---|---|---|---|---|")
    for r in rows:
        up_def, up_bin = r["t_def"] / r["t_ms"], r["t_bin"] / r["t_ms"]
        print(f"| {r['n']:,} | {r['d']} | {up_def:.0f}x {'yes' if up_def >= 20 else 'NO'} | {up_bin:.1f}x "
              f"{'yes' if up_bin > 1 else 'NO'} | {r['ari']:.4f} {'yes' if r['ari'] >= 0.99 else 'NO'} |")


def simdex_alone(args, gpu: bool) -> None:
    """simdex on a large 16-d set and a high-dimensional one (ARI against the generating blobs)."""
    gcol = " simdex GPU s |" if gpu else ""
    print(f"\n## simdex alone\n\n| n | d | bandwidth | wall s | clusters | ARI vs blobs | n_iter_ |{gcol}")
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for n, d in ((1_000_000, 16), (100_000, 4096)):
        bw = BANDWIDTH[d]
        X, y = blobs(n, d, 20, seed=d + 1)
        t, ms = timed(lambda bw=bw, X=X: MeanShift(bandwidth=bw, n_jobs=args.n_jobs, device="cpu").fit(X))
        t_g = timed(lambda bw=bw, X=X: MeanShift(bandwidth=bw, device="gpu").fit(X))[0] if gpu else None
        print(f"| {n:,} | {d} | {bw} | {t:.1f} | {len(ms.cluster_centers_)} | "
              f"{adjusted_rand_score(y, ms.labels_):.4f} | {ms.n_iter_} |" + (f" {t_g:.2f} |" if gpu else ""))
        del X, y, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--n", type=ints, default=[50_000, 200_000], help="points, comma-separated")
    ap.add_argument("--dims", type=ints, default=[2, 8, 16], help="dimensions, comma-separated (2, 8, 16)")
    ap.add_argument("--centers", type=int, default=8)
    ap.add_argument("--n-jobs", type=int, default=2, help="threads for both libraries")
    ap.add_argument("--sklearn-timeout", type=float, default=30.0,
                    help="seconds: a scikit-learn run predicted longer than this is extrapolated, not run")
    ap.add_argument("--large", action="store_true", help="also simdex alone at 1M x 16-d and 100k x 4096-d")
    args = ap.parse_args()

    gpu = gpu_available() or _torch_cuda()
    skc.MeanShift(bandwidth=1.0, n_jobs=args.n_jobs).fit(blobs(500, 2, 3, seed=0)[0])  # start joblib's workers
    MeanShift(bandwidth=1.0).fit(blobs(500, 2, 3, seed=0)[0])                            # and simdex's imports
    print(f"# simdex mean shift benchmark\n\nmachine: {platform.processor() or platform.machine()}, {NCPU} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the start; GPU: {'yes' if gpu else 'no'}; scikit-learn "
          f"{sklearn.__version__}; data: make_blobs, {args.centers} centres in [-20, 20]^d, std 1, float32; "
          f"bandwidth (given to both): {BANDWIDTH}\n")
    t0 = time.perf_counter()
    rows = compare(args, gpu)
    targets(rows)
    if args.large:
        simdex_alone(args, gpu)
    print(f"\nrun: {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
