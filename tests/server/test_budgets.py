"""Search and Upsert budgets over real gRPC (in-process): refused with RESOURCE_EXHAUSTED naming the limit and its
flag, before the work when the request alone shows it, during the work otherwise; range answers keep only the
page they return. Against a real `simdex serve` process, with its memory measured: tests/e2e/test_budgets.py."""
import grpc
import numpy as np
import pytest

from conftest import InProcessServer, oracle
from simdex.convert import matrix_to_pb as matrix
from simdex.index.ann import AnnIndex
from simdex.limits import Limits
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.service import collection as collection_mod
from simdex.types import SearchParams

D = 8
N = 500


class Server(InProcessServer):
    def __init__(self, path, limits: Limits, max_message_mb: float = 64):
        super().__init__(path, limits=limits, max_message_mb=max_message_mb)
        self.channel = grpc.insecure_channel(self.target, options=[("grpc.max_send_message_length", -1)])
        self.stub = pb_grpc.SimdexStub(self.channel)

    def close(self):
        self.channel.close()
        self.stop()


@pytest.fixture
def make(tmp_path):
    made = []

    def make_server(max_message_mb: float = 64, **limits) -> Server:
        srv = Server(tmp_path / f"s{len(made)}", Limits(**limits), max_message_mb)
        srv.service.create_collection("c", D)
        xb = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
        srv.service.upsert("c", [f"i{j}" for j in range(N)], xb, [{"j": j} for j in range(N)])
        srv.xb = xb
        made.append(srv)
        return srv

    yield make_server
    for srv in made:
        srv.close()


def refused(call):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()
    return exc.value.details()


def forbid_search(monkeypatch):
    """From now on any FAISS or exact search fails the test: the request must be refused before the work."""
    def boom(*_a, **_k):
        raise AssertionError("searched before refusing")
    for name in ("knn", "range"):
        monkeypatch.setattr(AnnIndex, name, boom)
    monkeypatch.setattr(collection_mod.Collection, "_exact", boom)


def test_knn_over_the_hit_budget_is_refused_before_searching(make, monkeypatch):
    srv = make(max_search_results=1000)
    forbid_search(monkeypatch)
    req = pb.SearchRequest(collection="c", queries=matrix(srv.xb[:11]), k=100)  # 1,100 hits
    msg = refused(lambda: srv.stub.Search(req))
    assert "11 x 100 = 1100 hits" in msg and "--max-search-results" in msg


def test_knn_that_cannot_fit_the_message_is_refused_before_searching(make, monkeypatch):
    srv = make(max_message_mb=0.01, max_search_results=10**9)  # 10,485 bytes
    forbid_search(monkeypatch)
    req = pb.SearchRequest(collection="c", queries=matrix(srv.xb[:20]), k=100)  # >= 20 x 100 x 7 bytes
    assert "at least 14000 bytes" in refused(lambda: srv.stub.Search(req))


def test_knn_with_metadata_over_its_budget_is_refused_before_searching(make, monkeypatch):
    srv = make(max_search_metadata=50)
    forbid_search(monkeypatch)
    req = pb.SearchRequest(collection="c", queries=matrix(srv.xb[:6]), k=10, include_metadata=True)
    assert "--max-search-metadata" in refused(lambda: srv.stub.Search(req))


def test_range_search_stops_as_soon_as_its_hits_pass_the_budget(make, monkeypatch):
    srv = make(max_search_results=1200)
    calls = []
    real = AnnIndex.range

    def counting(self, xq, *a, **k):
        calls.append(len(xq))
        return real(self, xq, *a, **k)

    monkeypatch.setattr(AnnIndex, "range", counting)
    req = pb.SearchRequest(collection="c", queries=matrix(srv.xb[:40]), radius=1e9, page_size=5)  # 20,000 hits
    msg = refused(lambda: srv.stub.Search(req))
    assert "--max-search-results" in msg and "at least 1500 hits" in msg
    assert calls == [2, 2], "queries go in slices of budget / items, and the search stops past the budget"


def test_range_pages_keep_only_the_page_and_agree_across_ties(make):
    srv = make()
    ties = np.repeat(srv.xb[:1], 30, axis=0)  # 30 items at one distance from the query: pages cut through ties
    srv.service.upsert("c", [f"t{j}" for j in range(30)], ties)
    got, token = [], ""
    while True:
        r = srv.stub.Search(pb.SearchRequest(collection="c", queries=matrix(srv.xb[:1]), radius=2.0, page_size=7,
                                             page_token=token)).results[0]
        assert len(r.ids) <= 7
        got.extend(r.ids)
        token = r.next_page_token
        if not token:
            break
    col = srv.service.collections.get("c")
    full = col.search(srv.xb[:1], 0, SearchParams(), (), radius=2.0)[0]
    assert got == full.ids and len(set(got)) == len(got) and {f"t{j}" for j in range(30)} <= set(got)
    (page,) = col.search(srv.xb[:1], 0, SearchParams(), (), radius=2.0, keep=8)
    assert page.ids == full.ids[:8]


def test_exact_search_in_slices_equals_the_oracle(make, monkeypatch):
    """The exact path reads vectors and scores queries a few at a time; the answer is the same."""
    srv = make()
    monkeypatch.setattr(collection_mod, "EXACT_SUBSET_FLOATS", 256)  # 32 vectors a chunk, 8 queries a slice
    flt = '{"j": {"$lt": 64}}'  # 64 matches: the exact path, in 2 chunks
    xq = srv.xb[100:120]
    r = srv.stub.Search(pb.SearchRequest(collection="c", queries=matrix(xq), k=5, filter=flt))
    _, I = oracle(srv.xb[:64], xq, 5)
    assert [list(h.ids) for h in r.results] == [[f"i{j}" for j in row] for row in I]
    r = srv.stub.Search(pb.SearchRequest(collection="c", queries=matrix(xq), radius=8.0, filter=flt, page_size=1000))
    d2 = ((xq[:, None, :].astype(np.float64) - srv.xb[None, :64]) ** 2).sum(-1)
    for row, h in zip(d2, r.results):
        assert sorted(h.ids) == sorted(f"i{j}" for j in np.flatnonzero(row < 8.0))


def messages(n_msgs: int, rows: int, consumed: list, bad_at: int | None = None):
    rng = np.random.default_rng(1)
    for m in range(n_msgs):
        consumed.append(m)
        if m == bad_at:
            yield pb.UpsertRequest(collection="c", ids=[f"m{m}"], texts=["not a vector"])
            continue
        yield pb.UpsertRequest(collection="c", ids=[f"m{m}-{i}" for i in range(rows)],
                               vectors=matrix(rng.standard_normal((rows, D))))


def test_upsert_stream_over_its_budget_is_refused_at_the_message_that_passes_it(make):
    srv = make(max_upsert_mb=1.0)  # under 3 messages of 8,000 x 8 floats (256 KB) and their ids (~120 KB)
    consumed: list = []
    msg = refused(lambda: srv.stub.Upsert(messages(200, 8000, consumed)))
    assert "--max-upsert-mb" in msg and "at upsert message 2, after 16000 items" in msg
    assert len(consumed) < 200, "the server stopped reading the stream at the refusal"
    assert srv.service.count("c") == N


def test_each_upsert_message_is_checked_as_it_arrives(make):
    srv = make()
    with pytest.raises(grpc.RpcError) as exc:
        srv.stub.Upsert(messages(50, 10, [], bad_at=2))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "upsert message 2 carries texts, the stream began with vectors" in exc.value.details()
    x = matrix(np.ones((1, D + 1)))
    with pytest.raises(grpc.RpcError) as exc:  # the collection's dim, at the first message
        srv.stub.Upsert(iter([pb.UpsertRequest(collection="c", ids=["w"], vectors=x)]))
    assert "upsert message 0 vectors: dimension 9 does not match the collection's dim 8" in exc.value.details()
    hashed = pb.UpsertRequest(collection="c", ids=["h1"], vectors=matrix(np.ones((1, D))), content_hashes=["x"])
    bare = pb.UpsertRequest(collection="c", ids=["h2"], vectors=matrix(np.ones((1, D))))
    with pytest.raises(grpc.RpcError) as exc:
        srv.stub.Upsert(iter([hashed, bare]))
    assert "upsert message 1: content_hashes" in exc.value.details()
    assert srv.service.count("c") == N


def test_a_bad_row_is_named_by_its_place_in_the_stream(make):
    srv = make()
    x = np.ones((5, D), np.float32)
    x[3, 0] = np.nan
    first = pb.UpsertRequest(collection="c", ids=[f"a{i}" for i in range(5)], vectors=matrix(np.ones((5, D))))
    second = pb.UpsertRequest(collection="c", ids=[f"b{i}" for i in range(5)], vectors=matrix(x))
    with pytest.raises(grpc.RpcError) as exc:
        srv.stub.Upsert(iter([first, second]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "upsert message 1" in exc.value.details()
    assert dict(exc.value.trailing_metadata())["simdex-item"] == "8"


def test_a_stream_under_its_budget_is_stored_whole(make):
    srv = make(max_upsert_mb=1.0)
    consumed: list = []
    r = srv.stub.Upsert(messages(3, 1000, consumed))
    assert r.upserted == 3000 and srv.service.count("c") == N + 3000
    got = srv.service.get("c", ["m2-999"])[0].vector
    x = np.random.default_rng(1).standard_normal((3, 1000, D)).astype(np.float32)
    np.testing.assert_array_equal(got, x[2, 999])
