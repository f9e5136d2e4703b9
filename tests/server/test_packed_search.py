"""The packed k-NN answer (SearchRequest.packed): the same hits as one QueryHits per query, in three fields."""
import numpy as np
import pytest

from conftest import clustered
from simdex import convert
from simdex.errors import Internal
from simdex.proto import simdex_pb2 as pb


def _request(xq, k, packed, **kw):
    return pb.SearchRequest(collection="c", queries=pb.Matrix(data=xq.tobytes(), shape=list(xq.shape)), k=k,
                            packed=packed, **kw)


def _rows(resp: pb.SearchResponse):
    """(ids, distances) per query from either form."""
    if resp.HasField("packed"):
        ans = convert.PackedAnswer.from_pb(resp.packed)
        return [(h.ids, h.distances.tolist()) for h in ans]
    return [(list(h.ids), np.frombuffer(h.distances, np.float32).tolist()) for h in resp.results]


@pytest.mark.parametrize("index", ["Flat", "HNSW16"])
def test_packed_and_per_query_answers_hold_the_same_hits(remote, stub, index):
    xb = clustered(400, 8, seed=1)
    remote.create_collection("c", 8, "l2", index)
    remote.upsert("c", [f"id-{i}" for i in range(len(xb))], xb, metadata=[{"g": i % 50} for i in range(len(xb))])
    xq = clustered(30, 8, seed=2)
    for k, flt in ((10, ""), (1, ""), (12, '{"g": 7}')):  # the filter matches 8 items: fewer hits than k
        packed = stub.Search(_request(xq, k, True, filter=flt))
        plain = stub.Search(_request(xq, k, False, filter=flt))
        assert packed.HasField("packed") and not packed.results
        assert not plain.HasField("packed") and len(plain.results) == len(xq)
        assert _rows(packed) == _rows(plain)
        assert list(packed.packed.counts) == [min(k, 8) if flt else k] * len(xq)


def test_range_searches_and_metadata_are_answered_per_query_even_when_packed_is_asked(remote, stub):
    xb = clustered(100, 4, seed=3)
    remote.create_collection("c", 4, "l2", "Flat")
    remote.upsert("c", [f"id-{i}" for i in range(len(xb))], xb)
    ranged = stub.Search(_request(xb[:1], 0, True, radius=1.0))
    with_meta = stub.Search(_request(xb[:2], 3, True, include_metadata=True))
    for resp, n in ((ranged, 1), (with_meta, 2)):
        assert not resp.HasField("packed") and len(resp.results) == n
    assert list(with_meta.results[0].metadata) == ["{}"] * 3


def test_the_client_reads_packed_answers_with_fewer_hits_than_k_padded(remote):
    remote.create_collection("c", 2, "l2", "Flat")
    remote.upsert("c", ["a", "b"], np.array([[0, 0], [1, 0]], np.float32))
    r = remote.search("c", np.array([[0, 0], [1, 0]], np.float32), k=3)
    assert r.ids == [["a", "b"], ["b", "a"]]
    np.testing.assert_array_equal(r.distances[:, :2], [[0, 1], [0, 1]])
    assert np.isposinf(r.distances[:, 2]).all()


def test_a_malformed_packed_answer_is_an_internal_error_not_a_wrong_answer():
    bad = pb.PackedHits(ids="a\0b", distances=np.zeros(3, np.float32).tobytes(), counts=[2, 1])
    with pytest.raises(Internal, match="malformed"):
        convert.PackedAnswer.from_pb(bad)


def test_a_packed_answer_slices_into_its_queries():
    p = pb.PackedHits(ids="a\0b\0c\0d", distances=np.arange(4, dtype=np.float32).tobytes(), counts=[1, 0, 3])
    ans = convert.PackedAnswer.from_pb(p)
    assert len(ans) == 3 and not ans.full(1)
    assert [h.ids for h in ans] == [["a"], [], ["b", "c", "d"]]
    tail = ans[1:]
    assert len(tail) == 2 and [h.ids for h in tail] == [[], ["b", "c", "d"]]
    assert tail[-1].distances.tolist() == [1, 2, 3]
    assert len(ans[3:]) == 0
    with pytest.raises(IndexError):
        ans[3]
