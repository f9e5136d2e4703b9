"""Bad input over real gRPC: the right status, a message naming the problem, nothing written, server alive.

The same bad calls through the Client, on both transports, are in tests/clients/test_bad_input.py."""
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc


@pytest.fixture
def col(remote):
    remote.create_collection("c", dim=4)
    remote.upsert("c", ["a", "b"], np.eye(4, dtype=np.float32)[:2], [{"x": 1}, {"x": 2}])
    return remote


def msg(ids, x, name="c", metadata=()):
    x = np.asarray(x, dtype="<f4")
    return pb.UpsertRequest(collection=name, ids=ids, metadata=list(metadata),
                            vectors=pb.Matrix(data=x.tobytes(), shape=list(x.shape)))


def status_of(call):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.code(), exc.value.details()


def test_stream_with_a_bad_later_message_writes_nothing(col, stub):
    good = msg(["n1", "n2"], np.ones((2, 4)))
    bad = msg(["n3"], np.ones((1, 3)))
    code, details = status_of(lambda: stub.Upsert(iter([good, bad])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "mixes vector dimensions" in details
    assert col.count("c") == 2


def test_stream_naming_two_collections_is_refused(col, stub):
    code, details = status_of(lambda: stub.Upsert(iter([msg(["n1"], np.ones((1, 4))),
                                                         msg(["n2"], np.ones((1, 4)), name="other")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one stream writes one collection" in details
    assert col.count("c") == 2


def test_empty_stream_and_byte_count_mismatch(col, stub):
    code, details = status_of(lambda: stub.Upsert(iter([])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no items" in details
    broken = pb.UpsertRequest(collection="c", ids=["z"], vectors=pb.Matrix(data=b"\0" * 12, shape=[1, 4]))
    code, details = status_of(lambda: stub.Upsert(iter([broken])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 16 bytes" in details


def test_oversized_message_is_resource_exhausted(tmp_path):
    from conftest import InProcessServer

    srv = InProcessServer(tmp_path / "small", max_message_mb=1)
    try:
        channel = grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", -1)])
        stub = pb_grpc.SimdexStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=256))
        x = np.ones((2000, 256), dtype="<f4")  # 2 MB in one message
        code, details = status_of(lambda: stub.Upsert(iter([msg([str(i) for i in range(2000)], x)])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details
        assert stub.Count(pb.CountRequest(collection="c")).count == 0
        channel.close()
    finally:
        srv.stop()


# ---- throw random requests at the server: never INTERNAL/UNKNOWN, always still serving ----------------------
names = st.sampled_from(["c", "nope", "", "a b", "x" * 200])
shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
json_texts = st.one_of(st.just(""), st.just("{}"), st.just('{"x": 1}'), st.just("[]"), st.just("{bad"),
                       st.just('{"x": NaN}'), st.text(max_size=10))


@st.composite
def matrices(draw):
    shape = draw(shapes)
    n = int(np.prod(shape)) if shape else 0
    values = draw(st.lists(floats, min_size=n, max_size=n)) if n <= 36 else [0.0] * n
    data = np.array(values, dtype="<f4").tobytes()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return pb.Matrix(data=data, shape=shape)


requests = st.one_of(
    st.builds(lambda n, q, k, f, r, p, t: ("Search", pb.SearchRequest(
        collection=n, queries=q, k=k, filter=f, page_token=t, params=pb.SearchParams(nprobe=p),
        **({"radius": r} if r is not None else {}))),
        names, matrices(), st.integers(0, 20000), json_texts, st.one_of(st.none(), floats),
        st.integers(0, 2 ** 32 - 1), st.sampled_from(["", "garbage", "eyJvZmZzZXQiOiAtMX0="])),
    st.builds(lambda n, ids, m, meta: ("Upsert", [pb.UpsertRequest(collection=n, ids=ids, vectors=m,
                                                                   metadata=meta)]),
              names, st.lists(st.text(max_size=5), max_size=4), matrices(), st.lists(json_texts, max_size=4)),
    st.builds(lambda n, ids: ("Get", pb.GetRequest(collection=n, ids=ids)), names, st.lists(st.text(max_size=5),
                                                                                             max_size=3)),
    st.builds(lambda n, ids, ig: ("Delete", pb.DeleteRequest(collection=n, ids=ids, ignore_missing=ig)),
              names, st.lists(st.text(max_size=5), max_size=3), st.booleans()),
    st.builds(lambda n, f: ("Count", pb.CountRequest(collection=n, filter=f)), names, json_texts),
    st.builds(lambda n, d, m, i: ("CreateCollection", pb.CreateCollectionRequest(name=n, dim=d, metric=m, index=i)),
              names, st.integers(0, 70000), st.sampled_from(["", "l2", "ip", "cosine", "x"]),
              st.sampled_from(["", "Flat", "HNSW8", "IVF4,Flat", "PQ3", "nonsense", "IDMap,Flat"])),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=requests)
def test_random_requests_never_crash_or_internal(col, stub, req):
    method, payload = req
    call = getattr(stub, method)
    try:
        call(iter(payload) if method == "Upsert" else payload, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, exc.details())
        assert exc.details(), "every error carries a message"
    assert stub.GetCollection(pb.GetCollectionRequest(name="c")).dim == 4


# ---- the item at fault travels in trailing metadata ---------------------------------------------------------
def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_item_at_fault_travels_as_trailing_metadata(stub):
    images = [_png(0), _png(1)[:30], _png(2)]
    with pytest.raises(grpc.RpcError) as exc:
        stub.Embed(pb.EmbedRequest(embedder="densenet-bc-random", images=images))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images[1]" in exc.value.details()
    assert dict(exc.value.trailing_metadata())["simdex-item"] == "1"


def test_an_error_about_the_whole_request_carries_no_item(stub):
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetCollection(pb.GetCollectionRequest(name="nope"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "simdex-item" not in dict(exc.value.trailing_metadata() or ())
