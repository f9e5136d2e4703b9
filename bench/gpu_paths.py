#!/usr/bin/env python
"""GPU check of simdex's torch paths, one run: exact search (index/torch_exact.py, the module the server runs),
embedding throughput per embedder, and mean shift (torch CUDA against the FAISS CPU path).

For a GPU host that has torch (and numpy) only: this script imports no SQL, gRPC or DICOM module, and faiss and
scikit-learn only for the mean-shift rows (skipped, with a line saying so, where they are missing). It prints
markdown tables:

 (a) exact search: QPS at batch 1 and batch 1,000 for 1M x 128 and 1M x 4096 (fp32; bf16/fp16 storage at 128-d and
     bf16 at 4096-d) and recall@10 of a sample of queries against an fp64 CPU oracle, next to the device's physical
     bounds (`--bandwidth-tbs`, `--fp32-tflops`; H200 defaults: 4.8 TB/s, 67 TFLOP/s): one query must read every
     stored byte once (batch 1: bandwidth bound), a batch of 1,000 does 2 n d flops per query (compute bound at the
     fp32 CUDA-core rate). Targets: >= 50% of the bandwidth bound at batch 1, >= 30% of the fp32 compute bound at
     batch 1,000, recall@10 = 1.0; each marked met or missed.
 (b) embedding images/s per embedder (random weights) at batch 1, 32 and 256, fp32 and bf16/fp16 autocast, from
     preprocessed batches in pinned memory (decoding excluded: it is the DataLoader's or the decode pool's work).
 (c) mean shift, as before.

Usage: python bench/gpu_paths.py [--small] [--skip-meanshift] [--skip-cpu-large]. `--small` (20k rows, smaller
batches) runs on a CPU in about a minute, to prove the script works; its numbers say nothing about a GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simdex.defaults import quiet_openmp  # noqa: E402

quiet_openmp()  # before torch loads: idle OpenMP threads sleep instead of spinning

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from simdex.index.torch_exact import TorchFlat  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
K = 10
ORACLE_SAMPLE = 20
BW_TARGET, COMPUTE_TARGET = 0.50, 0.30
ELT = {"float32": 4, "float16": 2, "bfloat16": 2}


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed_loop(fn, min_reps: int, max_s: float) -> float:
    """Seconds per call of fn(), after one warm-up call, over at least min_reps calls or max_s seconds."""
    fn()
    sync()
    t, reps = time.perf_counter(), 0
    while reps < min_reps or time.perf_counter() - t < max_s / 4:
        fn()
        reps += 1
        if time.perf_counter() - t > max_s:
            break
    sync()
    return (time.perf_counter() - t) / reps


def make_rows(n: int, d: int, seed: int, chunk: int = 65536):
    """(n, d) float32 rows of a Gaussian mixture, made on the device chunk by chunk (yielded)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    centres = torch.randn((256, d), generator=g, device=DEV)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        lab = torch.randint(0, 256, (m,), generator=g, device=DEV)
        yield centres[lab] + 0.5 * torch.randn((m, d), generator=g, device=DEV)


def oracle_top(index: TorchFlat, xq: np.ndarray, k: int) -> np.ndarray:
    """Exact top k by squared L2 in fp64 on the CPU, over the index's own fp32 rows (streamed in chunks)."""
    q = torch.from_numpy(xq).double()
    best_d = torch.full((len(xq), 0), float("inf"), dtype=torch.float64)
    best_i = torch.zeros((len(xq), 0), dtype=torch.int64)
    step = max(1, (1 << 28) // (8 * index.d))
    for a in range(0, index.ntotal, step):
        b = min(index.ntotal, a + step)
        x = index._host[a:b] if index.half else index._x[a:b].cpu().numpy()
        x = torch.from_numpy(np.ascontiguousarray(x)).double()
        dist = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
        d_, i_ = torch.cat([best_d, dist], 1), torch.cat([best_i, torch.arange(a, b).expand(len(xq), -1)], 1)
        best_d, j = d_.topk(k, dim=1, largest=False)
        best_i = i_.gather(1, j)
    return best_i.numpy()


def queries(index: TorchFlat, rng, nq: int) -> np.ndarray:
    """(nq, d) float32: stored rows plus noise, so that each query has true near neighbours."""
    at = np.sort(rng.integers(0, index.ntotal, nq))
    base = index._host[at] if index.half else index._x[torch.from_numpy(at).to(DEV)].cpu().numpy()
    return (base + 0.3 * rng.standard_normal(base.shape)).astype(np.float32)


def mark(value: float, bound: float, target: float) -> str:
    if not CUDA:
        return "n/a (no GPU)"
    return f"{value / bound:.0%} {'met' if value >= target * bound else 'missed'}"


def search_rows(args) -> None:
    if args.small:
        sets = [(20_000, 128, ["float32", "bfloat16", "float16"]), (20_000, 512, ["float32", "bfloat16"])]
        batches = (1, 100)
    else:
        sets = [(1_000_000, 128, ["float32", "bfloat16", "float16"]), (1_000_000, 4096, ["float32", "bfloat16"])]
        batches = (1, 1000)
    bw, flops = args.bandwidth_tbs * 1e12, args.fp32_tflops * 1e12
    print("\n### Exact search (simdex/index/torch_exact.py), l2, k = 10\n")
    print(f"| n x d | storage | batch | QPS | bound QPS | of bound (target) | recall@10 vs fp64 ({ORACLE_SAMPLE} q) |")
    print("|---|---|---|---|---|---|---|")
    for n, d, storages in sets:
        rng = np.random.default_rng(d)
        for storage in storages:
            index = TorchFlat(d, "l2", device=DEV, storage=storage)
            try:
                for x in make_rows(n, d, seed=d):
                    index.add(x)
            except torch.OutOfMemoryError:
                print(f"| {n:,} x {d} | {storage} | — | out of device memory | | | |", flush=True)
                continue
            xq = queries(index, rng, max(batches) + ORACLE_SAMPLE)
            sample = xq[:ORACLE_SAMPLE]
            _, P = index.search(sample, K)
            truth = oracle_top(index, sample, K)
            recall = np.mean([len(set(p) & set(t)) / K for p, t in zip(P, truth)])
            for nq in batches:
                sec = timed_loop(lambda nq=nq: index.search(xq[ORACLE_SAMPLE:ORACLE_SAMPLE + nq], K),
                                 min_reps=3 if nq > 1 else 20, max_s=args.seconds)
                qps = nq / sec
                if nq == 1:
                    bound, target = bw / (n * d * ELT[storage]), BW_TARGET
                    what = "bandwidth"
                else:
                    bound, target = flops / (2 * n * d), COMPUTE_TARGET
                    what = "fp32 compute"
                print(f"| {n:,} x {d} | {storage} | {nq} | {qps:,.0f} | {bound:,.0f} ({what}) | "
                      f"{mark(qps, bound, target)} ({target:.0%}) | {recall:.3f} |", flush=True)
            del index
            if CUDA:
                torch.cuda.empty_cache()


def embed_rows(args) -> None:
    from simdex.embedder import registry  # the registry needs no torchvision; the VGG/DenseNet-121 factories do

    names = ["densenet-bc-random"] if args.small else ["vgg16-fc6-random", "densenet121-random", "densenet-bc-random"]
    batches = (1, 8) if args.small else (1, 32, 256)
    paths = ["fp32", "bf16"] + (["fp16"] if CUDA else [])
    print("\n### Embedding images/s (forward from pinned preprocessed batches; random weights)\n")
    print("| embedder | precision | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for name in names:
        for precision in paths:
            os.environ["SIMDEX_AUTOCAST"] = precision
            try:
                emb = registry.load(name, device=str(DEV))
            except ImportError as exc:
                print(f"| {name} | {precision} | skipped: {exc} |" + " |" * (len(batches) - 1), flush=True)
                break
            one = emb.preprocess(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
            cells = []
            for b in batches:
                x = emb.stack([one] * b)
                sec = timed_loop(lambda x=x: emb.forward(x), min_reps=3, max_s=args.seconds / 2)
                cells.append(f"{b / sec:,.1f}")
            print(f"| {name} | {precision} | " + " | ".join(cells) + " |", flush=True)
            del emb
    os.environ.pop("SIMDEX_AUTOCAST", None)


def meanshift_rows(args) -> None:
    try:
        from sklearn.datasets import make_blobs
        from sklearn.metrics import adjusted_rand_score

        from simdex.estimators.meanshift import MeanShift
    except ImportError as exc:
        print(f"\n(mean shift rows skipped: {exc})")
        return
    sets = [(5_000, 2, 4.0), (5_000, 16, 6.0)] if args.small else [
        (50_000, 2, 4.0), (50_000, 16, 6.0), (1_000_000, 16, 6.0), (100_000, 4096, 100.0)]
    print("\n### Mean shift\n")
    print("| n | d | bandwidth | CPU (FAISS) s | GPU (torch CUDA) s | speed-up | clusters CPU / GPU | ARI CPU vs GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for n, d, bw in sets:
        box = 20 * (d ** 0.5) if d > 16 else 20
        X, _ = make_blobs(n_samples=n, n_features=d, centers=20, center_box=(-box, box), random_state=0)
        X = X.astype(np.float32)
        gpu = "gpu" if CUDA else "auto"  # a CPU run (--small) times the default path twice
        run = (lambda X=X, dev=gpu: MeanShift(bandwidth=bw, device=dev).fit(X))
        MeanShift(bandwidth=bw, device=gpu).fit(X[:2000])  # warm-up: CUDA context, kernels
        t = time.perf_counter()
        g = run()
        sync()
        t_g = time.perf_counter() - t
        if args.skip_cpu_large and n > 50_000:
            print(f"| {n:,} | {d} | {bw} | — | {t_g:.2f} | — | — / {len(g.cluster_centers_)} | — |", flush=True)
            continue
        t = time.perf_counter()
        c = run(dev="cpu")
        t_c = time.perf_counter() - t
        print(f"| {n:,} | {d} | {bw} | {t_c:.2f} | {t_g:.2f} | {t_c / t_g:.1f}x | {len(c.cluster_centers_)} / "
              f"{len(g.cluster_centers_)} | {adjusted_rand_score(c.labels_, g.labels_):.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU-sized sets: proves the script runs")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="device memory bandwidth, TB/s (H200: 4.8)")
    ap.add_argument("--fp32-tflops", type=float, default=67.0, help="fp32 CUDA-core rate, TFLOP/s (H200: 67)")
    ap.add_argument("--seconds", type=float, default=4.0, help="time spent per timed cell at most (about)")
    ap.add_argument("--skip-meanshift", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-cpu-large", action="store_true", help="mean shift's CPU path only on the 50k sets")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dev = torch.cuda.get_device_name(0) if CUDA else "none (CPU run: no GPU figure)"
    print(f"- GPU: {dev}; torch {torch.__version__}; CPU cores {os.cpu_count()}; "
          f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    search_rows(args)
    if not args.skip_embed:
        embed_rows(args)
    if not args.skip_meanshift:
        meanshift_rows(args)
    print(f"\n- total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
