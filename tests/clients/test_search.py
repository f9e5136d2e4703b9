"""Search results against an exact NumPy oracle, through both client transports."""
import numpy as np
import pytest

from conftest import clustered, oracle, recall_at


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_search_equals_oracle_for_every_metric(client, metric):
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((800, 16)).astype(np.float32)
    xq = rng.standard_normal((25, 16)).astype(np.float32)
    names = [f"id-{i}" for i in range(len(xb))]
    client.create_collection("m", dim=16, metric=metric, index="Flat")
    client.upsert("m", names, xb)
    r = client.search("m", xq, k=10)
    D, I = oracle(xb, xq, 10, metric)
    assert r.ids == [[names[j] for j in row] for row in I]
    np.testing.assert_allclose(r.distances, D, rtol=1e-4, atol=1e-4)


def test_fewer_items_than_k_pads_with_the_worst_score(client):
    client.create_collection("few", dim=4, metric="cosine")
    client.upsert("few", ["a", "b"], np.eye(4, dtype=np.float32)[:2])
    r = client.search("few", np.eye(4, dtype=np.float32)[:1], k=5)
    assert r.ids == [["a", "b"]]
    assert r.distances.shape == (1, 5)
    assert np.isneginf(r.distances[0, 2:]).all()


def test_replaced_and_deleted_vectors_are_never_returned(client):
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((300, 8)).astype(np.float32)
    names = [f"n{i}" for i in range(300)]
    client.create_collection("rd", dim=8)
    client.upsert("rd", names, xb)
    # move n0..n49 far away, delete n50..n99
    moved = xb[:50] + 100.0
    client.upsert("rd", names[:50], moved)
    assert client.delete("rd", names[50:100]) == 50
    assert client.count("rd") == 250
    r = client.search("rd", xb[:100], k=5)
    for i, ids in enumerate(r.ids):
        assert not set(ids) & set(names[:100]), f"query {i} returned a stale or deleted id: {ids}"
    live = np.concatenate([moved, xb[100:]])
    live_names = names[:50] + names[100:]
    D, I = oracle(live, xb[:100], 5)
    assert r.ids == [[live_names[j] for j in row] for row in I]
    assert client.search("rd", moved[:3], k=1).ids == [["n0"], ["n1"], ["n2"]]


def test_batch_search_larger_than_one_message_is_split(tmp_path):
    from conftest import InProcessServer
    from simdex.clients import Client

    srv = InProcessServer(tmp_path / "s", max_message_mb=0.25)
    try:
        with Client(srv.target, max_message_mb=0.25) as c:
            rng = np.random.default_rng(4)
            xb = rng.standard_normal((3000, 64)).astype(np.float32)
            names = [f"x{i}" for i in range(3000)]
            c.create_collection("big", dim=64)
            assert c.upsert("big", names, xb) == 3000          # ~770 kB: several messages, one transaction
            xq = xb[:2000]                                     # ~512 kB of queries
            r = c.search("big", xq, k=3)
            assert [ids[0] for ids in r.ids] == names[:2000]
            items = c.get("big", names)                         # ~770 kB of vectors back
            np.testing.assert_array_equal(np.stack([it.vector for it in items]), xb)
    finally:
        srv.stop()


# Each at its documented default search parameters.
KINDS = ["HNSW32", "IVF128,Flat", "IVF128,PQ16x4fs,RFlat", "PQ16x4fs,RFlat", "PCA16,IVF64,SQ8,RFlat", "SQ8,RFlat", "SQ8"]


def stocked(s, name: str, desc: str, n: int, d: int, nq: int, seed: int, metadata=(), step: int = 0):
    """Collection `name` of kind `desc` holding n clustered vectors, ids name[0] + i, upserted `step` at a time
    (0: at once); (xb, nq queries from the same clusters, ids)."""
    data = clustered(n + nq, d, seed=seed)
    xb, xq = data[:n], data[n:]
    names = [f"{name[0]}{i}" for i in range(n)]
    s.create_collection(name, d, "l2", desc)
    step = step or n
    for i in range(0, n, step):
        s.upsert(name, names[i:i + step], xb[i:i + step], metadata[i:i + step])
    return xb, xq, names


@pytest.mark.parametrize("desc", KINDS)
def test_approximate_kinds_reach_recall_at_default_parameters(sqlite_service, desc):
    s = sqlite_service
    xb, xq, names = stocked(s, "p", desc, 12000, 32, 200, seed=5, step=4000)
    assert s.get_collection("p").trained
    hits, _ = s.search("p", xq, 10)
    _, I = oracle(xb, xq, 10)
    rec = recall_at([h.ids for h in hits], I, names, 10)
    assert rec >= 0.95, f"{desc}: recall@10 {rec:.3f}"


def test_training_kind_answers_exactly_until_trained_then_trains(sqlite_service):
    s = sqlite_service
    d = 16
    xb = clustered(6000, d, seed=7)
    names = [f"t{i}" for i in range(len(xb))]
    s.create_collection("ivf", d, "l2", "IVF64,Flat")  # needs 39 * 64 = 2496 vectors to train
    s.upsert("ivf", names[:1000], xb[:1000])
    st = s.get_collection("ivf")
    assert not st.trained and st.count == 1000
    hits, _ = s.search("ivf", xb[:50], 5)
    _, I = oracle(xb[:1000], xb[:50], 5)
    assert [h.ids for h in hits] == [[names[j] for j in row] for row in I]  # exact while untrained
    s.upsert("ivf", names[1000:], xb[1000:])
    assert s.get_collection("ivf").trained
    hits, _ = s.search("ivf", xb[:50], 5)
    _, I = oracle(xb, xb[:50], 5)
    assert recall_at([h.ids for h in hits], I, names, 5) >= 0.95


@pytest.mark.parametrize("desc", ["Flat", "HNSW32", "IVF64,Flat", "PQ8x4fs", "LSH"])
def test_filtered_search_through_the_index_returns_k_matching_hits(sqlite_service, desc):
    """Filters matching more items than the exact path takes go through FAISS (id selector, or oversampling
    for kinds that take none), and still return k matching hits."""
    s = sqlite_service
    n = 12000
    xb, xq, names = stocked(s, "flt", desc, n, 16, 50, seed=14, metadata=[{"group": i % 3} for i in range(n)])
    keep = np.arange(n) % 3 != 0        # 8,000 matches: more than the exact path's 4,096
    hits, _ = s.search("flt", xq, 10, filter={"group": {"$ne": 0}})
    for h in hits:
        assert len(h.ids) == 10
        assert all(int(i[1:]) % 3 != 0 for i in h.ids)
    _, I = oracle(xb[keep], xq, 10)
    sub = [names[j] for j in np.flatnonzero(keep)]
    rec = recall_at([h.ids for h in hits], I, sub, 10)
    if desc in ("Flat", "HNSW32", "IVF64,Flat"):
        assert rec >= (1.0 if desc == "Flat" else 0.95), f"{desc}: filtered recall@10 {rec:.3f}"


def test_restrictive_filter_on_a_graph_index_still_finds_k(sqlite_service):
    s = sqlite_service
    n, d = 9000, 8
    xb = clustered(n, d, seed=15)
    names = [f"g{i}" for i in range(n)]
    s.create_collection("hn", d, "l2", "HNSW16")
    s.upsert("hn", names, xb, [{"rare": i % 1500 == 0} | {"bucket": i % 2} for i in range(n)])
    # 6 rare items, answered exactly; and half the items in a bucket, answered through the graph
    hits, _ = s.search("hn", xb[:5], 10, filter={"rare": True})
    assert all(len(h.ids) == 6 and set(h.ids) == {f"g{i}" for i in range(0, n, 1500)} for h in hits)
    hits, _ = s.search("hn", xb[:5], 10, filter={"bucket": 1})
    assert all(len(h.ids) == 10 and all(int(i[1:]) % 2 == 1 for i in h.ids) for h in hits)


@pytest.mark.parametrize("desc", ["PQ16", "IVF64,PQ16", "PQ16,RFlat", "PCA16,IVF64,PQ8"])
def test_pq_kinds_skip_polysemous_training(desc):
    """index_factory turns polysemous training on; simdex never uses it and it was most of PQ training time."""
    import faiss

    from simdex.index.ann import make_faiss_index

    index = make_faiss_index(32, "l2", desc)
    while isinstance(index, (faiss.IndexRefine, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index.index)
    assert index.do_polysemous_training is False
