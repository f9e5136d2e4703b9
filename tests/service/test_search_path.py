"""The fast search path keeps every guarantee: filter answers kept between writes never outlive a write, hits are
mapped to the right ids, small filtered sets are answered exactly from the index's own vectors, and SIMDEX_TRACE's
per-stage timer charges every stage of a Search."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import clustered, oracle, recall_at
from simdex import trace
from simdex.proto import simdex_pb2 as pb
from simdex.server.servicer import SimdexServicer


def _stock(s, name: str, desc: str, n: int, d: int = 16, seed: int = 3):
    xb = clustered(n, d, seed=seed)
    names = [f"i{j}" for j in range(n)]
    s.create_collection(name, d, "l2", desc)
    s.upsert(name, names, xb, [{"g": j % 10, "b": j % 2 == 0} for j in range(n)])
    return xb, names


@pytest.mark.parametrize("desc", ["Flat", "HNSW32"])
@pytest.mark.parametrize("n", [3000, 12000])  # 300 matches: the exact path; 1,200: through the index's selector
def test_kept_filter_answers_follow_every_write(sqlite_service, desc, n, monkeypatch):
    s = sqlite_service
    scans = []
    filter_iids = s.store.filter_iids
    monkeypatch.setattr(s.store, "filter_iids", lambda *a: scans.append(a) or filter_iids(*a))
    xb, names = _stock(s, "c", desc, n)
    xq = xb[:20] + 0.01
    flt = {"g": 3}

    def check(live: dict[str, np.ndarray]):
        hits, _ = s.search("c", xq, 10, filter=flt)
        ids = sorted(live)
        _, I = oracle(np.stack([live[i] for i in ids]), xq, 10)
        for h in hits:
            assert set(h.ids) <= set(live), "a hit outside the filter's live items"
        assert recall_at([h.ids for h in hits], I, ids, 10) >= (1.0 if desc == "Flat" else 0.95)
        return hits

    live = {names[j]: xb[j] for j in range(n) if j % 10 == 3}
    first = check(live)
    assert len(scans) == 1
    assert [h.ids for h in check(live)] == [h.ids for h in first]  # answered again from the kept answer
    assert len(scans) == 1, "the filter's SQL ran again with no write in between"
    gone = sorted({i for h in first for i in h.ids})[:5]
    s.delete("c", gone)  # deleted: never returned again
    for i in gone:
        live.pop(i)
    assert not {i for h in check(live) for i in h.ids} & set(gone)
    assert len(scans) == 2, "a write must make the filter run again"
    moved = sorted(live)[:3]
    s.upsert("c", moved, np.stack([live[i] for i in moved]), [{"g": 4}] * 3)  # out of the filter now
    for i in moved:
        live.pop(i)
    s.upsert("c", ["new"], xq[:1], [{"g": 3}])  # into it: the nearest item of query 0
    live["new"] = xq[0]
    hits = check(live)
    assert hits[0].ids[0] == "new"
    assert not {i for h in hits for i in h.ids} & set(moved)


def test_filters_that_differ_only_in_json_type_are_kept_apart(sqlite_service):
    """True == 1 in Python, but JSON is strict: {"b": true} and {"b": 1} are different filters."""
    s = sqlite_service
    _stock(s, "c", "Flat", 500)
    q = np.zeros((1, 16), np.float32)
    by_bool, _ = s.search("c", q, 5, filter={"b": True})
    assert len(by_bool[0].ids) == 5
    by_int, _ = s.search("c", q, 5, filter={"b": 1})
    assert by_int[0].ids == []
    by_int, _ = s.search("c", q, 5, filter={"g": 1})
    by_float, _ = s.search("c", q, 5, filter={"g": 1.0})  # numbers compare by value
    assert by_int[0].ids == by_float[0].ids and len(by_int[0].ids) == 5


def test_hits_map_positions_to_ids_when_a_query_has_fewer_than_k(sqlite_service):
    s = sqlite_service
    xb, names = _stock(s, "c", "Flat", 7)
    hits, _ = s.search("c", xb[:3], 10)
    _, I = oracle(xb, xb[:3], 7)
    assert [h.ids for h in hits] == [[names[j] for j in row] for row in I]
    assert all(len(h.distances) == len(h.iids) == 7 for h in hits)


def test_exact_answers_from_the_index_vectors_match_the_database(sqlite_service):
    """A small filtered set of a graph kind is scored from the index's flat storage; a compressed kind reads the
    database; both give the exact answer."""
    s = sqlite_service
    for name, desc in (("h", "HNSW32"), ("p", "PQ4x4fs")):
        xb, names = _stock(s, name, desc, 3000)
        xq = xb[:10] + 0.01
        keep = np.flatnonzero(np.arange(3000) % 10 == 3)
        hits, _ = s.search(name, xq, 10, filter={"g": 3})
        D, I = oracle(xb[keep], xq, 10)
        assert [h.ids for h in hits] == [[names[keep[j]] for j in row] for row in I], desc
        np.testing.assert_allclose(np.stack([h.distances for h in hits]), D, rtol=1e-4, atol=1e-4)
    assert s.collections.get("h").ann.stored_vectors(np.arange(3)) is not None
    assert s.collections.get("p").ann.stored_vectors(np.arange(3)) is None


def test_trace_charges_each_stage_of_a_search(sqlite_service, monkeypatch, caplog):
    s = sqlite_service
    xb, _ = _stock(s, "c", "HNSW32", 2000)
    monkeypatch.setattr(trace, "ON", True)
    monkeypatch.setattr(trace, "LOG_EVERY", 4)
    servicer = SimdexServicer(s, 64 << 20)
    with caplog.at_level(logging.INFO, logger="simdex.trace"):
        for i in range(4):
            req = pb.SearchRequest(collection="c", k=5, queries=pb.Matrix(data=xb[i:i + 1].tobytes(), shape=[1, 16]))
            assert len(servicer.Search(req, None).results[0].ids) == 5
    (line,) = [r.getMessage() for r in caplog.records if r.name == "simdex.trace"]
    assert "over 4 calls" in line
    for stage in ("unpack", "validation", "lock wait", "faiss", "id mapping", "response", "total"):
        assert f" {stage} " in line
    calls = [{"unpack": 1000, "faiss": 3000}, {"unpack": 2000, "faiss": 5000, "filter": 7000}]
    summary = trace.summary(calls)
    assert summary["filter"][2] == 3.5 and summary["total"][2] == 9.0  # a skipped stage counts 0 us
