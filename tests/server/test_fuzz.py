"""Hostile requests over real gRPC, on SQLite and PostgreSQL: nested and huge JSON, numeric extremes, unicode edge
cases and lying shapes. Never INTERNAL or UNKNOWN, every error carries a message, the server keeps serving, and
no stored value ever breaks a later query (numeric, string and $in filters keep answering).

The milder random requests of tests/server/test_errors.py run beside these."""
import json

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc

BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@pytest.fixture
def hostile(tmp_path, db_url):
    """A stub on an in-process server over `db_url` (SQLite or PostgreSQL), collection "c" (dim 4) with 2 items."""
    from conftest import InProcessServer

    srv = InProcessServer(tmp_path / "srv", db_url=db_url)
    channel = grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", -1)])
    stub = pb_grpc.SimdexStub(channel)
    stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=4))
    x = np.eye(4, dtype="<f4")[:2]
    stub.Upsert(iter([pb.UpsertRequest(collection="c", ids=["a", "b"], metadata=['{"x": 1}', '{"x": "s"}'],
                                       vectors=pb.Matrix(data=x.tobytes(), shape=[2, 4]))]))
    stub.channel = channel  # for the raw-bytes calls
    yield stub
    channel.close()
    srv.stop()


# ---- JSON text, built as text so that it can hold what Python's json would never write -----------------------
INTS = [2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 63 - 1, 2 ** 53 + 1, 2 ** 64, 10 ** 400, -10 ** 400]
NUMBER_TEXTS = ["1e400", "-1e400", "1e-400", "5e-324", "1.7976931348623157e308", "-0.0", "0e0", "NaN", "Infinity",
                "-Infinity", "1" * 5000]
ESCAPES = ["\\u0000", "a\\u0000b", "\\ud800", "\\udfff", "x\\udc80y", "\\ud83d\\ude00", "\\ufeff", "\\uffff"]
plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)  # proto strings: valid UTF-8 only
odd_strings = st.sampled_from(["", "\n", "a\n", "\x00", "é", "\u202e", "e\u0301", "'; DROP TABLE items; --",
                               "x" * 600, "\U0010ffff"])
string_texts = st.one_of(
    st.sampled_from(ESCAPES).map(lambda e: f'"{e}"'),
    st.tuples(st.one_of(plain_text, odd_strings), st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1])))
scalar_texts = st.one_of(
    st.sampled_from(["null", "true", "false", "0", "1", "2", "1.5"]),
    st.sampled_from([str(v) for v in INTS] + NUMBER_TEXTS),
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    string_texts)
keys = st.one_of(st.sampled_from(["x", "a", "x\n"]).map(json.dumps), string_texts)


def _nest(t) -> str:
    depth, inner, as_list = t
    return "[" * depth + inner + "]" * depth if as_list else '{"x":' * depth + inner + "}" * depth


json_texts = st.recursive(
    scalar_texts,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(keys, inner), max_size=4).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
    max_leaves=8)
deep_texts = st.tuples(st.sampled_from([2, 63, 64, 65, 999, 1001, 100_000]), scalar_texts, st.booleans()).map(_nest)
any_json = st.one_of(json_texts, deep_texts, st.sampled_from(["", "{", "[]", "{}", "\x00", '{"x": 1}{']))

# one item's metadata: mostly objects on the fields the after-checks filter on
metadata_texts = st.one_of(
    st.tuples(st.one_of(scalar_texts, json_texts, deep_texts), scalar_texts).map(
        lambda t: f'{{"x": {t[0]}, "a": {t[1]}}}'),
    any_json)


@st.composite
def in_lists(draw) -> str:
    n = draw(st.sampled_from([1, 3, 997, 1001, 10_000, 10_001]))
    pool = draw(st.lists(scalar_texts, min_size=1, max_size=4))
    base = [str(i) for i in range(n - len(pool))] + pool
    return '{"$in": [' + ",".join(base[:n]) + "]}"


rules = st.one_of(
    scalar_texts, in_lists(), deep_texts,
    st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne", "$in", "$regex"]), scalar_texts).map(
        lambda t: f'{{"{t[0]}": {t[1]}}}'))
filter_texts = st.one_of(
    st.tuples(keys, rules).map(lambda t: f"{{{t[0]}: {t[1]}}}"),
    any_json)


# ---- matrices whose shape and bytes need not agree -----------------------------------------------------------
FLOATS = [0.0, -0.0, 1.0, 1e-45, 1e18, 9.2e18, 1e19, 1e20, 3.4e38, -3.4e38, np.nan, np.inf, -np.inf]


@st.composite
def matrices(draw) -> pb.Matrix:
    n, d = draw(st.sampled_from([0, 1, 2, 3])), draw(st.sampled_from([0, 1, 4, 5]))
    values = draw(st.lists(st.sampled_from(FLOATS), min_size=n * d, max_size=n * d))
    data = np.array(values, dtype="<f4").tobytes()
    shape = [n, d]
    lie = draw(st.sampled_from(["none", "shape", "bytes", "rank", "huge"]))
    if lie == "shape":
        shape = [draw(st.integers(0, 8)), draw(st.integers(0, 8))]
    elif lie == "bytes":
        data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=7))
    elif lie == "rank":
        shape = draw(st.lists(st.integers(0, 4), max_size=4))
    elif lie == "huge":
        shape = [draw(st.sampled_from([0, 1, 2 ** 31, 2 ** 32 - 1])), draw(st.sampled_from([0, 4, 2 ** 32 - 1]))]
    return pb.Matrix(data=data, shape=shape)


# ---- requests: one hostile facet each, the rest plain, so that the hostile part reaches the store ------------
bad_names = st.one_of(st.sampled_from(["nope", "c\n", "x" * 129]), odd_strings)
good_ids = st.lists(st.sampled_from(["a", "b", "n1", "n2", "n3"]), min_size=1, max_size=3, unique=True)
bad_ids = st.lists(st.one_of(st.sampled_from(["x" * 512, "x" * 513]), odd_strings, plain_text), min_size=1,
                   max_size=3)
ONE_QUERY = pb.Matrix(data=np.ones((1, 4), dtype="<f4").tobytes(), shape=[1, 4])


def _plain_vectors(n: int) -> pb.Matrix:
    return pb.Matrix(data=np.ones((n, 4), dtype="<f4").tobytes(), shape=[n, 4])


@st.composite
def upserts(draw):
    # content hashes and fingerprints past their columns: OUTSIDE below, until Items.upsert checks them
    facet = draw(st.sampled_from(["metadata", "metadata", "metadata", "vectors", "matrix", "ids", "fingerprint",
                                  "name"]))
    batch = draw(bad_ids if facet == "ids" else good_ids)
    n = len(batch)
    metas = draw(st.lists(metadata_texts, min_size=n, max_size=n)) if facet == "metadata" else []
    vectors = _plain_vectors(n)
    if facet == "vectors":
        x = draw(st.lists(st.sampled_from(FLOATS), min_size=4 * n, max_size=4 * n))
        vectors = pb.Matrix(data=np.array(x, dtype="<f4").tobytes(), shape=[n, 4])
    elif facet == "matrix":
        vectors = draw(matrices())
    fingerprint = draw(st.sampled_from(["f" * 129, "a\x00", "\n"])) if facet == "fingerprint" else ""
    name = draw(bad_names) if facet == "name" else "c"
    return "Upsert", [pb.UpsertRequest(collection=name, ids=batch, vectors=vectors, metadata=metas,
                                       embedder_fingerprint=fingerprint)]


@st.composite
def searches(draw):
    facet = draw(st.sampled_from(["filter", "filter", "filter", "queries", "k", "radius", "token"]))
    req = pb.SearchRequest(collection="c", queries=ONE_QUERY, k=3, include_metadata=draw(st.booleans()))
    if facet == "filter":
        req.filter = draw(filter_texts)
    elif facet == "queries":
        req.queries.CopyFrom(draw(matrices()))
    elif facet == "k":
        req.k = draw(st.sampled_from([0, 10_000, 10_001, 2 ** 32 - 1]))
    elif facet == "radius":
        req.radius = draw(st.sampled_from([0.0, 1.0, 3.4e38, -3.4e38, float("inf"), float("nan")]))
        req.page_size = draw(st.sampled_from([0, 1, 2 ** 32 - 1]))
        req.filter = draw(st.one_of(st.just(""), filter_texts))
    else:
        req.radius = 1.0
        req.page_token = draw(st.sampled_from(["e30=", "eyJvZmZzZXQiOiAxZTQwMH0=", "W10=", "garbage"]))
    return "Search", req


id_requests = st.one_of(
    st.builds(lambda i: ("Get", pb.GetRequest(collection="c", ids=i)), bad_ids),
    st.builds(lambda i, ig: ("Delete", pb.DeleteRequest(collection="c", ids=i, ignore_missing=ig)), bad_ids,
              st.booleans()))
creates = st.builds(
    lambda n, d, i, e: ("CreateCollection", pb.CreateCollectionRequest(name=n, dim=d, index=i, embedder=e)),
    st.one_of(st.just("c2"), bad_names), st.sampled_from([4, 0, 2 ** 31, 2 ** 32 - 1]),
    st.one_of(st.sampled_from(["Flat", "IVF" + "0" * 200 + "1,Flat", "Flat\x00", "Flat\n"]), odd_strings),
    st.one_of(st.just(""), odd_strings))
requests = st.one_of(
    upserts(), upserts(), searches(), id_requests, creates,
    st.builds(lambda f: ("Count", pb.CountRequest(collection="c", filter=f)), filter_texts))

# the after-checks: queries over the fields hostile metadata was written to must keep answering
AFTER = ['{"x": {"$gte": 0}}', '{"x": {"$lt": 1e300}}', '{"x": 1}', '{"a": {"$in": [1, 2.5, "s", true, null]}}',
         '{"x": {"$gt": "a"}}', '{"a": {"$ne": 9007199254740993}}']


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(req=requests)
def test_hostile_requests_never_internal_and_never_break_later_queries(hostile, req):
    method, payload = req
    try:
        getattr(hostile, method)(iter(payload) if method == "Upsert" else payload, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() not in BAD_CODES, (method, exc.details())
        assert exc.details(), "every error carries a message"
    if method == "CreateCollection" and _exists(hostile, "c2"):
        hostile.DeleteCollection(pb.DeleteCollectionRequest(name="c2"))
    assert hostile.GetCollection(pb.GetCollectionRequest(name="c")).dim == 4
    for f in AFTER:
        hostile.Count(pb.CountRequest(collection="c", filter=f), timeout=30)
        hostile.Search(pb.SearchRequest(collection="c", queries=ONE_QUERY, k=3, filter=f), timeout=30)


def _exists(stub, name: str) -> bool:
    return any(c.name == name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections)


# ---- found by this fuzzer outside the gates it covers: each is one line in the file named, for the lead ------
DEEP = "[" * 100_000 + "]" * 100_000


def _token(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


def _embedder_upsert(fingerprint: str):
    def call(stub):
        dim = stub.CreateCollection(pb.CreateCollectionRequest(name="e", embedder="densenet-bc-random")).dim
        x = np.ones((1, dim), "<f4")
        stub.Upsert(iter([pb.UpsertRequest(collection="e", ids=["a"], embedder_fingerprint=fingerprint,
                                           vectors=pb.Matrix(data=x.tobytes(), shape=[1, dim]))]))
    return call


def _raw(method: str, payload: bytes):
    def call(stub):
        stub.channel.unary_unary(f"/simdex.v1.Simdex/{method}", request_serializer=lambda b: b,
                            response_deserializer=lambda b: b)(payload, timeout=30)
    return call


OUTSIDE = {  # case: (call, the gate that refuses it)
    "content hash longer than its column": (
        lambda s: s.Upsert(iter([pb.UpsertRequest(collection="c", ids=["n"], vectors=ONE_QUERY,
                                                  content_hashes=["h" * 129])])),
        "service/items.py Items.upsert: hashes = check_hashes(hashes, len(ids))"),
    "embedder fingerprint longer than its column": (
        _embedder_upsert("f" * 129), "service/items.py Items.upsert: fingerprint = check_fingerprint(fingerprint)"),
    "NUL in an embedder fingerprint": (
        _embedder_upsert("f\x00"), "service/items.py Items.upsert: fingerprint = check_fingerprint(fingerprint)"),
    "index description longer than its column": (
        lambda s: s.CreateCollection(pb.CreateCollectionRequest(name="d", dim=4, index="PCA4," * 60 + "Flat")),
        "index/ann.check_description_text, called by CreateCollection through index/describe.check"),
    "deep JSON in TrainHead labels": (
        lambda s: s.TrainHead(pb.TrainHeadRequest(collection="c", head="h", labels=DEEP)),
        "convert.json_object: except RecursionError -> InvalidArgument"),
    "deep JSON in TrainHead params": (
        lambda s: s.TrainHead(pb.TrainHeadRequest(collection="c", head="h", label_field="x", params=DEEP)),
        "convert.json_object: except RecursionError -> InvalidArgument"),
    "deep JSON in a page token": (
        lambda s: s.Search(pb.SearchRequest(collection="c", queries=ONE_QUERY, radius=1.0, page_token=_token(DEEP))),
        "service/paging.decode: except (ValueError, KeyError, TypeError, RecursionError)"),
    "a bandwidth whose square overflows float32": (
        lambda s: s.Cluster(pb.ClusterRequest(collection="c", bandwidth=3e38)),
        "estimators/meanshift: refuse bandwidth**2 > wire.MAX_SQ_NORM (the radius FAISS gets is float32)"),
    "invalid UTF-8 in a string field": (
        _raw("Count", b"\x0a\x01\xff"),
        "server/app.py: an interceptor whose handler decodes leniently and aborts INVALID_ARGUMENT"),
}


# Still open (see the closing note): their fix is in a module owned elsewhere or in grpcio itself.
NOT_YET = {"a bandwidth whose square overflows float32", "invalid UTF-8 in a string field"}


def _known(case: str):
    """Strict xfail for the cases not fixed yet: the test passes once the fix lands, and the mark must go then."""
    if case not in NOT_YET:
        return case
    return pytest.param(case, marks=pytest.mark.xfail(strict=True, raises=(AssertionError, pytest.fail.Exception),
                                                      reason=OUTSIDE[case][1]))


@pytest.mark.parametrize("case", [_known(c) for c in OUTSIDE])
def test_hostile_input_outside_these_gates_is_invalid_argument(hostile, case):
    with pytest.raises(grpc.RpcError) as exc:
        OUTSIDE[case][0](hostile)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
