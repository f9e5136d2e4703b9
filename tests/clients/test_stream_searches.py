"""The Client's searches over SearchStream (simdex.clients.search_stream): the same answers as Search calls, the
stream half-closed when idle (so a stopping server is not held up), and a Search call whenever no stream serves."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import InProcessServer, clustered, oracle, until
from simdex import defaults
from simdex.clients import Client
from simdex.clients import search_stream
from simdex.errors import InvalidArgument

D = 8


def _fill(c: Client, n: int = 500):
    xb = clustered(n, D, seed=3)
    c.create_collection("c", D, "l2", "Flat")
    c.upsert("c", [f"v{i}" for i in range(n)], xb)
    return xb


def _count_search_calls(c: Client) -> list:
    calls, search = [], c._transport.stub.Search
    c._transport.stub.Search = lambda req, **kw: calls.append(req) or search(req, **kw)
    return calls


def test_searches_go_over_streams_with_the_answers_of_search_calls(server):
    with Client(server.target) as c, Client(server.target, search_slots=0) as plain:
        xb = _fill(c)
        xq = clustered(64, D, seed=4)
        unary = _count_search_calls(c)
        got: dict = {}

        def worker(j):
            for i in range(j, len(xq), 8):
                got[i] = c.search("c", xq[i:i + 1], 5)

        ts = [threading.Thread(target=worker, args=(j,)) for j in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert unary == [] and 1 <= c._transport._streams.opened <= defaults.CLIENT_SEARCH_SLOTS
        _, idx = oracle(xb, xq, 5)
        for i in range(len(xq)):
            assert got[i].ids == [[f"v{j}" for j in idx[i]]], i
            assert got[i].ids == plain.search("c", xq[i:i + 1], 5).ids


def test_errors_over_a_stream_are_those_of_search_and_the_next_search_works(server):
    """Errors only the server can find (the collection's kind, its dimension): each ends its stream, the
    caller gets what a Search call would give, and the next search opens a new stream."""
    with Client(server.target) as c, Client(server.target, search_slots=0) as plain:
        xb = _fill(c)
        for kw in (dict(params={"efSearch": 64}), dict(q=np.ones((1, D - 1), np.float32))):
            q = kw.pop("q", xb[:1])
            with pytest.raises(InvalidArgument) as over_stream:
                c.search("c", q, 2, **kw)
            with pytest.raises(InvalidArgument) as alone:
                plain.search("c", q, 2, **kw)
            assert str(over_stream.value) == str(alone.value)
        assert c.search("c", xb[:1], 1).ids == [["v0"]]
        assert c._transport._streams.opened == 3  # each error ended its stream; each next search opened one


def test_an_idle_stream_is_closed_and_its_server_place_freed(tmp_path, monkeypatch):
    from simdex.server.calls import CommitGate

    monkeypatch.setattr(defaults, "CLIENT_STREAM_IDLE_S", 0.2)
    gate = CommitGate()
    srv = InProcessServer(tmp_path / "srv", search_streams=1, gate=gate)
    try:
        with Client(srv.target) as a, Client(srv.target) as b:
            xb = _fill(a)
            a.search("c", xb[:1], 1)
            streams = a._transport._streams
            assert len(streams.idle) == 1
            deadline = time.monotonic() + 5
            while streams.idle and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not streams.idle  # half-closed after 0.2-0.4 s idle
            unary = _count_search_calls(b)
            while gate._waiting and time.monotonic() < deadline:  # the server's handler has seen the half-close
                time.sleep(0.01)
            time.sleep(0.1)  # and given its one place back, for b
            assert b.search("c", xb[:1], 1).ids == [["v0"]]
            assert unary == [] and b._transport._streams.opened == 1
    finally:
        srv.stop()


def test_a_stream_the_server_cut_for_idling_is_replaced_by_a_new_one(tmp_path, monkeypatch):
    """A server whose --stream-idle-s is shorter than the client's idle close cancels the client's idle stream;
    the next search opens another stream (not a Search call, not an error)."""
    from simdex.server.calls import CommitGate

    monkeypatch.setattr(defaults, "CLIENT_STREAM_IDLE_S", 60.0)
    gate = CommitGate(stream_idle_s=0.5)  # two places: the new stream need not wait for the cut one's
    srv = InProcessServer(tmp_path / "srv", search_streams=2, gate=gate)
    try:
        with Client(srv.target) as c:
            xb = _fill(c)
            assert c.search("c", xb[:1], 1).ids == [["v0"]]
            streams = c._transport._streams
            [cut] = streams.idle
            until(cut.responses.done, "the server's cancel of the idle stream to reach the client")
            gate.stream_idle_s = 0  # no more cuts: a stalled machine must not cut the new stream before its search
            unary = _count_search_calls(c)
            assert c.search("c", xb[1:2], 1).ids == [["v1"]]
            assert unary == [] and streams.opened == 2 and cut not in streams.idle
    finally:
        srv.stop()


def test_when_the_server_has_no_stream_free_the_client_sends_search_calls(tmp_path):
    srv = InProcessServer(tmp_path / "srv", search_streams=0)
    try:
        with Client(srv.target) as c:
            xb = _fill(c)
            unary = _count_search_calls(c)
            assert c.search("c", xb[:2], 1).ids == [["v0"], ["v1"]]
            assert c.search("c", xb[2:3], 1).ids == [["v2"]]
            # the refusal paused the streams: the second search did not try one again
            assert len(unary) == 2 and c._transport._streams.opened == 1
            assert not c._transport._streams.usable()
    finally:
        srv.stop()


def test_a_stop_is_not_held_up_by_a_clients_idle_stream(tmp_path, monkeypatch, caplog):
    import logging

    from simdex.server.calls import CommitGate, graceful_stop

    monkeypatch.setattr(defaults, "CLIENT_STREAM_IDLE_S", 0.2)
    gate = CommitGate()
    srv = InProcessServer(tmp_path / "srv", gate=gate)
    with Client(srv.target) as c:
        xb = _fill(c)
        c.search("c", xb[:1], 1)
        caplog.set_level(logging.INFO, logger="simdex.server.calls")
        graceful_stop(srv.server, gate, grace=20.0)
    srv.service.close()
    assert "grace period" not in caplog.text, "the stop waited out its grace for an idle stream"


def test_after_a_drain_a_search_is_refused_unavailable_with_the_reason(tmp_path):
    """The server cancels the idle stream at its drain; the next search goes on a new stream or (when it took the
    cancelled stream before the cancel reached it) as a Search call, and either is refused UNAVAILABLE with the
    reason (gRPC's retry policy sends it to another replica of a list), never cut as a bare CANCELLED."""
    from simdex.errors import Unavailable
    from simdex.server.calls import CommitGate

    gate = CommitGate()
    srv = InProcessServer(tmp_path / "srv", gate=gate)
    try:
        with Client(srv.target) as c:
            xb = _fill(c)
            assert c.search("c", xb[:1], 1).ids == [["v0"]]
            gate.drain()
            for i in (1, 2):
                with pytest.raises(Unavailable, match="^(Search|SearchStream): the server is shutting down; nothing"):
                    c.search("c", xb[i:i + 1], 1)
        with Client(srv.target, search_slots=0) as plain:  # and a Search call is refused the same way
            with pytest.raises(Unavailable, match="the server is shutting down; nothing of this call was stored"):
                plain.search("c", xb[:1], 1)
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(srv.target) as ch:  # health checks stay open during a stop (probes read them)
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10) is not None
    finally:
        srv.stop()


def test_searches_repeated_alone_open_no_more_streams_than_slots(tmp_path):
    """A stack the server refuses RESOURCE_EXHAUSTED (its hits over max_search_results) is repeated search by
    search; those repeats go over the slots' streams or as Search calls, never over streams of their own."""
    from simdex.limits import Limits

    srv = InProcessServer(tmp_path / "srv", limits=Limits(max_search_results=5))
    try:
        with Client(srv.target, search_slots=2) as c:
            xb = _fill(c)
            xq = clustered(48, D, seed=6)
            got: dict = {}

            def worker(j):
                for i in range(j, len(xq), 8):
                    got[i] = c.search("c", xq[i:i + 1], 3)  # 3 hits alone; 6 or more stacked: refused

            ts = [threading.Thread(target=worker, args=(j,)) for j in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            _, idx = oracle(xb, xq, 3)
            assert [got[i].ids for i in range(len(xq))] == [[[f"v{j}" for j in row]] for row in idx]
            streams = c._transport._streams
            assert streams.opened > 2 and streams.peak <= 2  # refusals ended streams; never more open than slots
    finally:
        srv.stop()


def test_a_client_with_a_timeout_sends_search_calls(server):
    with Client(server.target, timeout=30) as c:
        xb = _fill(c)
        unary = _count_search_calls(c)
        assert c.search("c", xb[:1], 1).ids == [["v0"]]
        assert c._transport._streams is None and len(unary) == 1


def test_a_stream_that_ends_unanswered_is_a_search_call(server, monkeypatch):
    """The server stopping (an OK end before the answer) or the connection lost: the search is made again as a
    Search call, which gRPC retries and balances."""
    with Client(server.target) as c:
        xb = _fill(c)
        unary = _count_search_calls(c)

        def lost(_request):
            raise search_stream.StreamLost("the server ended the stream (it is stopping)")

        monkeypatch.setattr(c._transport._streams, "send", lost)
        assert c.search("c", xb[:1], 1).ids == [["v0"]]
        assert len(unary) == 1
