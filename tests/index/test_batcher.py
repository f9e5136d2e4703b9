"""The combining batcher: concurrent callers share FAISS calls and each gets exactly its own rows."""
import threading
import time

import numpy as np
import pytest

from simdex.index.batcher import SearchBatcher


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_requests_are_stacked_and_answered_row_for_row(slots):
    calls = []

    def run(xq, k, key):
        calls.append(len(xq))
        # The first calls (one per slot) hold their slots until enough requests queued behind them to make a
        # group of one key hold three or more rows (or a first call already stacked them): stacking is then
        # certain, not a matter of how the threads happen to be scheduled.
        deadline = time.monotonic() + 10
        while (len(calls) <= slots and len(b._combiner._pending) < 5 and max(calls) <= 2
               and time.monotonic() < deadline):
            time.sleep(0.001)
        D = np.repeat(xq[:, :1], k, axis=1) + np.arange(k)[None, :] + key
        return D.astype(np.float32), np.repeat(xq[:, :1].astype(np.int64), k, axis=1)

    b = SearchBatcher(run, slots=slots)
    out = {}

    def caller(i):
        xq = np.full((1 + i % 2, 3), float(i), dtype=np.float32)
        out[i] = b.search(xq, 2 + i % 3, key=100 * (i % 2))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (D, P) in out.items():
        k = 2 + i % 3
        assert D.shape == (1 + i % 2, k) and P.shape == (1 + i % 2, k)
        np.testing.assert_array_equal(D[0], i + np.arange(k) + 100 * (i % 2))
        assert (P == i).all()
    assert max(calls) > 2, f"no request was ever stacked with another: {calls}"
    assert sum(calls) == sum(1 + i % 2 for i in range(16))


def test_an_error_reaches_every_caller_of_that_call():
    def run(xq, k, key):
        raise RuntimeError("index exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        SearchBatcher(run).search(np.zeros((1, 2), np.float32), 1, None)


@pytest.mark.parametrize("desc, stacks", [("Flat", True), ("IVF4,Flat", True), ("HNSW16", False),
                                          ("HNSW16,Flat", False), ("PCA8,HNSW16", False), ("HNSW16_PQ4", False)])
def test_graph_kinds_search_single_queries_without_the_batcher(desc, stacks):
    """A stacked HNSW call runs the same per-query graph walks one after another: only kinds that can share work
    between stacked queries go through the batcher (results are the same either way)."""
    from simdex.index.ann import _is_graph, make_faiss_index

    assert _is_graph(make_faiss_index(16, "l2", desc)) is not stacks


def test_a_graph_collection_answers_single_queries_directly(sqlite_service):
    s = sqlite_service
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((200, 8)).astype(np.float32)
    s.create_collection("g", 8, "l2", "HNSW16")
    s.upsert("g", [f"g{i}" for i in range(len(xb))], xb)
    col = s.collections.get("g")
    assert not col.ann.stacks

    def boom(*args, **kwargs):
        raise AssertionError("the batcher was used")

    col.batcher.search = boom
    hits, _ = s.search("g", xb[:3], 1)
    assert [h.ids for h in hits] == [["g0"], ["g1"], ["g2"]]
