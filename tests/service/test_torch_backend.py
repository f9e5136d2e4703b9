"""A real gRPC server with `search_backend="torch"`: exact collections are searched by torch (on the CPU here) and
answer what a FAISS-backed server answers, through filters, deletes, upserts, range search and a restart; the
backend is reported by GetCollection and logged."""
import logging

import numpy as np
import pytest

from conftest import InProcessServer, clustered
from simdex.clients import Client
from simdex.service.collection import EXACT_SUBSET

N, D_, NQ, K = 10000, 16, 20, 10  # more rows match the filter than EXACT_SUBSET: it runs as a mask in the index


@pytest.fixture
def pair(tmp_path, caplog):
    """A torch-backed server and a FAISS-backed one, each with a client."""
    caplog.set_level(logging.INFO, logger="simdex.service.collections")
    servers = [InProcessServer(tmp_path / b, search_backend=b) for b in ("torch", "faiss")]
    clients = [Client(s.target) for s in servers]
    yield servers, clients
    for c in clients:
        c.close()
    for s in servers:
        s.stop()


def load(c: Client, metric: str, index: str = "Flat"):
    xb = clustered(N, D_, seed=1)
    c.create_collection("t", dim=D_, metric=metric, index=index)
    c.upsert("t", [f"id{i}" for i in range(N)], xb, metadata=[{"half": i % 2} for i in range(N)])
    return xb


def same(rt, rf):
    assert rt.ids == rf.ids
    for dt, df in zip(rt.distances, rf.distances):
        np.testing.assert_allclose(dt, df, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_torch_server_answers_as_the_faiss_server(pair, metric, caplog):
    _, (ct, cf) = pair
    for c in (ct, cf):
        load(c, metric)
    assert ct.get_collection("t").search_backend == "torch:cpu:float32"
    assert cf.get_collection("t").search_backend == "faiss"
    assert "collection t: searched by torch:cpu:float32" in caplog.text
    xq = clustered(NQ, D_, seed=2)
    same(ct.search("t", xq, k=K), cf.search("t", xq, k=K))
    same(ct.search("t", xq[:1], k=K), cf.search("t", xq[:1], k=K))  # single queries go through the batcher
    assert N // 2 > EXACT_SUBSET
    same(ct.search("t", xq, k=K, filter={"half": 1}), cf.search("t", xq, k=K, filter={"half": 1}))
    r = cf.search("t", xq, k=K)
    for c in (ct, cf):
        c.delete("t", [i for row in r.ids for i in row[:2]])
        c.upsert("t", ["id1", "id3"], xq[:2] + 1e-3)  # replaced in place: new vectors under old ids
    same(ct.search("t", xq, k=K), cf.search("t", xq, k=K))
    assert ct.search("t", xq[:2], k=1).ids == [["id1"], ["id3"]]
    radius = float(np.median(cf.search("t", xq, k=30).distances[:, 20]))
    rt, rf = ct.search("t", xq[:5], radius=radius * 1.00001), cf.search("t", xq[:5], radius=radius * 1.00001)
    same(rt, rf)
    assert sum(len(i) for i in rt.ids) > 5


def test_restart_restores_the_torch_index_from_its_snapshot(tmp_path):
    srv = InProcessServer(tmp_path / "s", search_backend="torch")
    try:
        with Client(srv.target) as c:
            load(c, "cosine")
            c.delete("t", ["id0", "id5"])
            xq = clustered(NQ, D_, seed=3)
            before = c.search("t", xq, k=K)
        assert srv.service.snapshots.snapshot() == 1
    finally:
        srv.stop()
    again = InProcessServer(tmp_path / "s", search_backend="torch")
    try:
        with Client(again.target) as c:
            assert c.get_collection("t").search_backend == "torch:cpu:float32"
            same(c.search("t", xq, k=K), before)
    finally:
        again.stop()


def test_untrained_kind_on_torch_switches_to_faiss_once_trained(tmp_path):
    srv = InProcessServer(tmp_path / "s", search_backend="torch")
    try:
        with Client(srv.target) as c:
            c.create_collection("ivf", dim=D_, index="IVF16,Flat")
            xb = clustered(300, D_, seed=4)
            c.upsert("ivf", [f"a{i}" for i in range(300)], xb)
            info = c.get_collection("ivf")
            assert not info.trained and info.search_backend == "torch:cpu:float32"
            c.upsert("ivf", [f"b{i}" for i in range(1000)], clustered(1000, D_, seed=5))
            info = c.get_collection("ivf")
            assert info.trained and info.search_backend == "faiss"
    finally:
        srv.stop()
