#!/usr/bin/env python
"""Recall of simdex's graph kinds however the data arrives: chunk by chunk, in random or cluster order.

A benchmark, not a test (tests/service/test_chunked_recall.py checks the same at 20k x 48). Run from the repository
root:

    .venv/bin/python bench/recall_chunks.py                      # 100k x 128, HNSW32, efConstruction 40 and simdex's
    .venv/bin/python bench/recall_chunks.py --n 20000 --efc 320  # smaller, one setting

For each data kind (64 isotropic clusters, centre + 0.3 x noise; or the same clusters in 16 dimensions mapped
linearly into d, plus 0.01 x noise: low-rank), arrival order (random; or sorted by cluster) and chunk size (1k,
10k), the base vectors are upserted into an in-process `Simdex` collection one chunk per call, exactly as clients
fill one, and 1,000 held-out queries are searched at the default efSearch. recall@10 is against exact search
(FAISS brute force). --efc overrides simdex's efConstruction (simdex.index.ann.DEFAULT_EF_CONSTRUCTION) per run,
to compare. NSG is not measured: FAISS's NSG cannot add to a built graph, so a collection of it takes one upsert.
Prints one markdown table with the seconds each ingestion took.
"""
from __future__ import annotations

from simdex.defaults import quiet_openmp

quiet_openmp()

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from simdex.index import ann  # noqa: E402
from simdex.index.backend import faiss  # noqa: E402
from simdex.service.facade import Simdex  # noqa: E402
from timing import table  # noqa: E402

K = 10


def make_data(kind: str, n: int, d: int, nq: int, seed: int = 0):
    """(n, d) base vectors, their cluster labels, (nq, d) queries from the same distribution."""
    rng = np.random.default_rng(seed)
    r = d if kind == "isotropic" else 16
    centres = rng.standard_normal((64, r)).astype(np.float32)
    labels = rng.integers(0, 64, n + nq)
    x = centres[labels] + 0.3 * rng.standard_normal((n + nq, r)).astype(np.float32)
    if kind == "low-rank":
        x = x @ (rng.standard_normal((r, d)).astype(np.float32) / np.sqrt(r))
        x += 0.01 * rng.standard_normal((n + nq, d)).astype(np.float32)
    x = x.astype(np.float32)
    return x[:n], labels[:n], x[n:]


def recall_after_chunks(desc: str, xb, order: np.ndarray, chunk: int, xq, true: np.ndarray, work: Path):
    """(recall@10, ingest seconds) of a collection filled with xb[order] in chunks of `chunk` rows."""
    svc = Simdex(work, snapshot_interval=0)
    try:
        svc.create_collection("r", xb.shape[1], "l2", desc)
        names = [f"v{j}" for j in range(len(xb))]
        t0 = time.perf_counter()
        for a in range(0, len(xb), chunk):
            rows = order[a:a + chunk]
            svc.upsert("r", [names[j] for j in rows], xb[rows])
        seconds = time.perf_counter() - t0
        hits, _ = svc.search("r", xq, K)
        found = [{int(i[1:]) for i in h.ids} for h in hits]
        return float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, true)])), seconds
    finally:
        svc.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--index", action="append", help="graph kinds (default HNSW32)")
    ap.add_argument("--efc", default=f"40,{ann.DEFAULT_EF_CONSTRUCTION}",
                    help="efConstruction values, comma-separated (default: FAISS's 40 and simdex's)")
    ap.add_argument("--chunks", default="1000,10000")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="simdex-recall-"))
    rows = []
    print(f"# recall@10 after chunked ingestion: n={args.n:,}, d={args.d}, 1,000 queries, efSearch "
          f"{ann.DEFAULT_EF_SEARCH}\n\n- command: `{' '.join([sys.executable, *sys.argv])}`\n", flush=True)
    try:
        for kind in ("isotropic", "low-rank"):
            xb, labels, xq = make_data(kind, args.n, args.d, 1000)
            _, true = faiss.knn(xq, xb, K)
            for order_name, order in (("random", np.arange(args.n)), ("cluster", np.argsort(labels, kind="stable"))):
                for chunk in [int(c) for c in args.chunks.split(",")]:
                    for desc in args.index or ["HNSW32"]:
                        for efc in [int(v) for v in args.efc.split(",")]:
                            ann.DEFAULT_EF_CONSTRUCTION = efc
                            rec, secs = recall_after_chunks(desc, xb, order, chunk, xq, true, work / "c")
                            rows.append([kind, order_name, f"{chunk:,}", desc, str(efc), f"{rec:.3f}",
                                         f"{secs:.1f} s"])
                            print("| " + " | ".join(rows[-1]) + " |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(["data", "order", "chunk", "index", "efConstruction", "recall@10", "ingest"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
