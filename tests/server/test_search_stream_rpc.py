"""SearchStream on the wire: each request answered in order exactly as Search answers it, an error ends the stream
with Search's status, a server holds at most its --search-streams open, and a stopping server ends them."""
from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest

from conftest import InProcessServer, clustered
from simdex import convert
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc

D = 8


def matrix(x: np.ndarray) -> pb.Matrix:
    return pb.Matrix(data=x.astype("<f4").tobytes(), shape=list(x.shape))


@pytest.fixture
def filled(tmp_path):
    srv = InProcessServer(tmp_path / "srv", search_streams=2)
    channel = grpc.insecure_channel(srv.target)
    stub = pb_grpc.SimdexStub(channel)
    xb = clustered(400, D, seed=1)
    stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=D, index="Flat"))
    stub.Upsert(iter([pb.UpsertRequest(collection="c", ids=[f"v{i}" for i in range(len(xb))], vectors=matrix(xb),
                                       metadata=[json.dumps({"g": i % 4}) for i in range(len(xb))])]))
    srv.stub, srv.xb = stub, xb
    yield srv
    channel.close()
    srv.stop()


def _requests(xq: np.ndarray) -> list[pb.SearchRequest]:
    """k-NN packed and per-query, with metadata, filtered, and a range search: every kind Search answers."""
    out = []
    for i in range(len(xq)):
        q = matrix(xq[i:i + 1 + i % 3])
        out.append([pb.SearchRequest(collection="c", queries=q, k=4, packed=True),
                    pb.SearchRequest(collection="c", queries=q, k=3, include_metadata=True),
                    pb.SearchRequest(collection="c", queries=q, k=5, filter='{"g": 2}'),
                    pb.SearchRequest(collection="c", queries=q, radius=2.0, k=0)][i % 4])
    return out


def test_pipelined_requests_are_answered_in_order_as_search_answers_each(filled):
    reqs = _requests(clustered(12, D, seed=2))
    expect = [filled.stub.Search(r) for r in reqs]
    got = list(filled.stub.SearchStream(iter(reqs)))  # all sent before any answer is read
    assert len(got) == len(reqs)
    for r, e, g in zip(reqs, expect, got):
        assert g == e, r


def test_an_error_ends_the_stream_with_the_status_search_gives_it(filled):
    good = pb.SearchRequest(collection="c", queries=matrix(filled.xb[:1]), k=2, packed=True)
    bad_rows = filled.xb[:3].copy()
    bad_rows[1, 2] = np.nan
    for bad, code, item in ((pb.SearchRequest(collection="c", queries=matrix(bad_rows), k=2),
                             grpc.StatusCode.INVALID_ARGUMENT, "1"),
                            (pb.SearchRequest(collection="nope", queries=matrix(filled.xb[:1]), k=2),
                             grpc.StatusCode.NOT_FOUND, None)):
        with pytest.raises(grpc.RpcError) as alone:
            filled.stub.Search(bad)
        answers = []
        with pytest.raises(grpc.RpcError) as ei:
            for a in filled.stub.SearchStream(iter([good, good, bad, good])):
                answers.append(a)
        assert len(answers) == 2 and answers[0] == filled.stub.Search(good)
        assert ei.value.code() == alone.value.code() == code
        assert ei.value.details() == alone.value.details()
        assert dict(ei.value.trailing_metadata() or ()).get(convert.ITEM_KEY) == item


def _open_stream(stub, timeout=None):
    """A stream with one answered request, held open (its request iterator waits) until `release` is set."""
    release, answered = threading.Event(), threading.Event()
    req = pb.SearchRequest(collection="c", queries=matrix(np.zeros((1, D), np.float32)), k=1)

    def requests():
        yield req
        answered.wait()
        release.wait()

    call = stub.SearchStream(requests(), timeout=timeout)
    next(call)
    answered.set()
    return call, release


def test_streams_beyond_the_servers_limit_are_refused_until_one_closes(filled):
    held = [_open_stream(filled.stub) for _ in range(2)]  # the fixture's --search-streams 2
    req = pb.SearchRequest(collection="c", queries=matrix(filled.xb[:1]), k=1)
    with pytest.raises(grpc.RpcError) as ei:
        list(filled.stub.SearchStream(iter([req])))
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "all 2 search streams" in ei.value.details()
    assert dict(ei.value.trailing_metadata())[convert.STREAMS_FULL] == "full"
    assert len(filled.stub.Search(req).results[0].ids) == 1  # Search calls are still served
    call, release = held.pop()
    release.set()  # half-closes: the server's handler ends and frees its place
    assert list(call) == []
    assert len(list(filled.stub.SearchStream(iter([req])))) == 1
    for call, release in held:
        release.set()


def test_no_stream_is_served_with_search_streams_zero(tmp_path):
    srv = InProcessServer(tmp_path / "srv", search_streams=0)
    try:
        with grpc.insecure_channel(srv.target) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                list(pb_grpc.SimdexStub(ch).SearchStream(iter([pb.SearchRequest(collection="c", k=1)])))
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        srv.stop()


def test_a_stop_cancels_a_stream_waiting_for_its_next_request_at_once(tmp_path, caplog):
    """A stream nobody sends on does not hold a stop for its grace period: the drain cancels it, so the calls end
    within the grace and the stop never has to cut them."""
    import logging
    import time

    from simdex.server.calls import CommitGate, graceful_stop

    gate = CommitGate()
    srv = InProcessServer(tmp_path / "srv", gate=gate)
    try:
        stub = pb_grpc.SimdexStub(grpc.insecure_channel(srv.target))
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=D))
        call, release = _open_stream(stub)
        deadline = time.monotonic() + 5
        while not gate._waiting and time.monotonic() < deadline:  # its handler is back waiting for a request
            time.sleep(0.01)
        assert len(gate._waiting) == 1
        caplog.set_level(logging.INFO, logger="simdex.server.calls")
        graceful_stop(srv.server, gate, grace=20.0)
        with pytest.raises(grpc.RpcError) as ei:
            next(call)
        assert ei.value.code() == grpc.StatusCode.CANCELLED
        assert "grace period" not in caplog.text, "the stop waited out its grace for an idle stream"
        release.set()
    finally:
        srv.service.close()


def served(stub, request) -> bool:
    """A new stream is admitted and answers `request` (retried while refused RESOURCE_EXHAUSTED: a closed stream's
    handler gives its place back just after its client saw the end)."""
    import time

    deadline = time.monotonic() + 5
    while True:
        try:
            return len(list(stub.SearchStream(iter([request])))) == 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_stream_gives_its_place_back_however_it_ends(tmp_path):
    srv = InProcessServer(tmp_path / "srv", search_streams=1)
    try:
        stub = pb_grpc.SimdexStub(grpc.insecure_channel(srv.target))
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=D))
        ok = pb.SearchRequest(collection="c", queries=matrix(np.zeros((1, D), np.float32)), k=1)
        bad = pb.SearchRequest(collection="c", queries=matrix(np.zeros((1, D + 1), np.float32)), k=1)

        with pytest.raises(grpc.RpcError):  # ended by an error of its request
            list(stub.SearchStream(iter([ok, bad])))
        assert served(stub, ok)
        call, release = _open_stream(stub)  # cancelled by the client while the server waits for a request
        call.cancel()
        assert served(stub, ok)
        release.set()
    finally:
        srv.stop()


def test_a_stream_left_idle_past_the_servers_limit_is_cancelled_and_its_place_freed(tmp_path):
    """A peer that opens a stream and sends nothing more cannot keep its place: past --stream-idle-s the server
    cancels it (the client's own deadline, 10 s, would end it as DEADLINE_EXCEEDED instead)."""
    from simdex.server.calls import CommitGate

    gate = CommitGate(stream_idle_s=0.5)
    srv = InProcessServer(tmp_path / "srv", search_streams=1, gate=gate)
    try:
        stub = pb_grpc.SimdexStub(grpc.insecure_channel(srv.target))
        stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=D))
        call, release = _open_stream(stub, timeout=10)
        with pytest.raises(grpc.RpcError) as ei:
            next(call)
        assert ei.value.code() == grpc.StatusCode.CANCELLED
        gate.stream_idle_s = 0  # no more cuts: a stalled machine must not cut the next stream before its request
        assert served(stub, pb.SearchRequest(collection="c", queries=matrix(np.zeros((1, D), np.float32)), k=1))
        release.set()
    finally:
        srv.stop()
