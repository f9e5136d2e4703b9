#!/usr/bin/env python
"""simdex bf16 benchmark: does the bf16 CPU path keep the neighbours of the fp32 path, for every image embedder?

A benchmark, not a test (pytest collects only tests/). Run it from the repository root:

    .venv/bin/python bench/bf16.py                                     # every image embedder, 600 + 600 images
    .venv/bin/python bench/bf16.py --models densenet121 --digits 300 --natural 300

Data: bench/compression.py's images (scikit-learn's digits upsampled to 224x224, and seeded augmentations of the
photos and medical frames that ship inside installed packages), the first --digits digits and --natural
augmentations. Each embedder embeds them twice on the CPU: fp32, and bf16 autocast (what `SIMDEX_BF16=1` runs:
the same module, channels_last, `torch.autocast("cpu", torch.bfloat16)`, output cast back to float32). Activations
are cached in --cache per (embedder, precision), so an interrupted run resumes.

Models: the pretrained weights when their files are in the torch hub cache, else the seeded random-weight entries
(`...-random`); each row says which. `--queries` images (half digits, half photos) are held out as queries, the
rest are the database. The truth is exact fp32 search (fp32 queries against fp32 vectors); each row is
recall@10 = |top-10 ∩ true top-10| / 10 of another arrangement, for the cosine and the l2 metric:

* bf16: a collection filled and queried on the bf16 path;
* mixed q: bf16 queries against fp32 vectors (a server that changed path after the collection was filled);
* mixed db: a database half fp32, half bf16 (a random half), queried by fp32 and by bf16 queries in turn.

Also per embedder: the smallest per-row cosine between the two paths, the largest absolute difference of one value,
and the embedding time per image of each path (a shared 2-core machine: compare rows, not machines).
"""
from __future__ import annotations

import os

from simdex.defaults import quiet_openmp

quiet_openmp()  # before torch loads: idle OpenMP threads sleep instead of spinning
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import embed_cached, image_sets, table  # noqa: E402
from compression import recall as recall_per_query  # noqa: E402

LOG = logging.getLogger("bench.bf16")
K = 10
IMAGE_EMBEDDERS = ["vgg16-fc6", "vgg16-fc7", "densenet121", "densenet-bc"]


class Timed:
    """An embedder that times its calls: what embed_cached needs (name, precision, embed_images)."""

    def __init__(self, emb, name: str):
        self.emb, self.name, self.dim, self.precision = emb, name, emb.dim, emb.precision
        self.seconds, self.images = 0.0, 0

    def embed_images(self, images):
        t0 = time.perf_counter()
        y = self.emb.embed_images(images)
        self.seconds += time.perf_counter() - t0
        self.images += len(images)
        return y


def both_paths(name: str):
    """(fp32 embedder, bf16 embedder, weights line) of the same weights: the bf16 one is the fp32 one's module
    behind bf16 autocast, exactly what SIMDEX_BF16=1 builds."""
    import copy

    from simdex.embedder import registry
    from simdex.embedder.base import ImageEmbedder

    used = name if registry.weights_present(name) else f"{name}-random"
    line = "pretrained" if used == name else "**random weights** (no pretrained file in the torch hub cache)"
    os.environ["SIMDEX_BF16"] = "0"
    e32 = registry.load(used, device="cpu")
    e16 = ImageEmbedder(e32.name, e32.dim, copy.deepcopy(e32.module), e32.preprocess, e32.device,
                        e32.batch_size, bf16=True, fp=e32.weights_fingerprint)
    return e32, e16, used, line


def top_k(xq: np.ndarray, xb: np.ndarray, metric: str) -> np.ndarray:
    """(nq, d), (n, d) float32 -> (nq, K) int64 positions of the exact top-K (float64 arithmetic)."""
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
        score = -(q @ b.T)
    else:
        score = (q * q).sum(1)[:, None] - 2 * q @ b.T + (b * b).sum(1)[None, :]
    return np.argsort(score, axis=1, kind="stable")[:, :K]


def recall(P: np.ndarray, gt: np.ndarray) -> float:
    """Mean recall@K of (nq, K) positions against the truth (compression.recall per query)."""
    return float(recall_per_query(P, gt).mean())


def run_model(name: str, sets, args) -> list[str]:
    e32, e16, used, line = both_paths(name)
    t32, t16 = Timed(e32, used), Timed(e16, used)
    x32 = np.concatenate([embed_cached(t32, s, Path(args.cache)) for s in sets])
    x16 = np.concatenate([embed_cached(t16, s, Path(args.cache)) for s in sets])
    n_d = sets[0].n
    rng = np.random.default_rng(args.seed)
    q = np.concatenate([rng.choice(n_d, args.queries // 2, replace=False),
                        n_d + rng.choice(len(x32) - n_d, args.queries - args.queries // 2, replace=False)])
    db = np.setdiff1d(np.arange(len(x32)), q)
    half = rng.random(len(db)) < 0.5
    mixed = np.where(half[:, None], x16[db], x32[db])
    cos = np.sum(x32 * x16, 1) / np.maximum(np.linalg.norm(x32, axis=1) * np.linalg.norm(x16, axis=1), 1e-30)
    rows = []
    for metric in ("cosine", "l2"):
        gt = top_k(x32[q], x32[db], metric)
        r = {"bf16": recall(top_k(x16[q], x16[db], metric), gt),
             "mixed q": recall(top_k(x16[q], x32[db], metric), gt),
             "mixed db, fp32 q": recall(top_k(x32[q], mixed, metric), gt),
             "mixed db, bf16 q": recall(top_k(x16[q], mixed, metric), gt)}
        ms = lambda t: f"{1e3 * t.seconds / t.images:.0f}" if t.images else "cached"  # noqa: E731
        rows.append([f"`{used}` ({line})", f"{x32.shape[1]}", metric, *(f"{v:.3f}" for v in r.values()),
                     f"{cos.min():.5f}", f"{np.abs(x32 - x16).max():.4f}", ms(t32), ms(t16)])
        LOG.info("%s %s: %s", used, metric, r)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=IMAGE_EMBEDDERS)
    ap.add_argument("--digits", type=int, default=600, help="digits to embed (of 1,797; default 600)")
    ap.add_argument("--natural", type=int, default=600, help="photo/medical augmentations (default 600)")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries, half digits (default 200)")
    ap.add_argument("--cache", default="/tmp/simdex-bf16-cache", help="folder for cached activations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    flags = sorted({f for f in ("amx_bf16", "avx512_bf16") if f in Path("/proc/cpuinfo").read_text()})
    sets = image_sets(args.natural, args.seed)
    sets[0].n = min(args.digits, sets[0].limit)
    t0 = time.perf_counter()
    rows = [r for name in args.models for r in run_model(name, sets, args)]
    print(f"## bf16 against fp32: recall@{K} (truth: exact fp32 search)\n\n`{' '.join(sys.argv)}`; CPU bf16 "
          f"features: {', '.join(flags) or 'none'}; {sets[0].n} digits + {sets[1].n} photo/medical images, "
          f"{args.queries} held out as queries\n")
    print(table(["embedder", "dim", "metric", "bf16", "mixed q", "mixed db, fp32 q", "mixed db, bf16 q",
                 "min row cosine", "max abs diff", "fp32 ms/img", "bf16 ms/img"], rows))
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
