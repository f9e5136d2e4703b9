"""Recall of a graph kind does not depend on how the data arrives: chunk by chunk, in random or cluster order, on
isotropic clusters and on low-rank data (issue 13). Scaled down from bench/recall_chunks.py (100k x 128) to 20k x 48
in chunks of 1,000, where FAISS's default efConstruction of 40 reached recall@10 0.88 in cluster order."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle, recall_at

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from recall_chunks import make_data  # noqa: E402 - the benchmark's own data (64 clusters; or low-rank), scaled down

N, D, CHUNK, NQ = 20_000, 48, 1_000, 200


@pytest.mark.parametrize("order", ["random", "cluster"])
@pytest.mark.parametrize("kind", ["isotropic", "low-rank"])
def test_graph_recall_after_chunked_ingestion(sqlite_service, kind, order):
    s = sqlite_service
    xb, labels, xq = make_data(kind, N, D, NQ)
    arrival = np.argsort(labels, kind="stable") if order == "cluster" else np.arange(N)
    names = [f"v{j}" for j in range(N)]
    s.create_collection("g", D, "l2", "HNSW32")
    for a in range(0, N, CHUNK):
        rows = arrival[a:a + CHUNK]
        s.upsert("g", [names[j] for j in rows], xb[rows])
    hits, _ = s.search("g", xq, 10)
    _, I = oracle(xb, xq, 10)
    rec = recall_at([h.ids for h in hits], I, names, 10)
    assert rec >= 0.95, f"{kind}, {order} order, chunks of {CHUNK}: recall@10 {rec:.3f}"
