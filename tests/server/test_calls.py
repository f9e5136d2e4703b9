"""A write commits only while its call is alive (simdex.server.calls): a cancelled or expired Upsert stream, or
one the server's stop cut off, stores nothing, and its end is logged as such, not as an internal error."""
import logging
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import InProcessServer, until
from simdex.errors import DeadlineExceeded, Unavailable
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.calls import Cancelled, CommitGate, client_stream

DIM = 4


class FakeContext:
    def __init__(self, active=True, remaining=60.0):
        self.active, self.remaining = active, remaining

    def is_active(self):
        return self.active

    def time_remaining(self):
        return self.remaining


def part(tag: str, n: int = 20) -> pb.UpsertRequest:
    x = np.ones((n, DIM), dtype="<f4")
    return pb.UpsertRequest(collection="c", ids=[f"{tag}-{i}" for i in range(n)],
                            vectors=pb.Matrix(data=x.tobytes(), shape=[n, DIM]))


@pytest.fixture
def gated(tmp_path):
    gate = CommitGate()
    srv = InProcessServer(tmp_path / "srv", gate=gate)
    srv.service.create_collection("c", DIM)
    channel = grpc.insecure_channel(srv.target)
    yield srv, gate, pb_grpc.SimdexStub(channel)
    channel.close()
    srv.stop()


def test_a_stream_whose_iterator_ends_on_a_cancelled_call_is_an_error():
    # gRPC's iterator may simply stop when the call is cancelled: that end must not read as the client's half-close
    with pytest.raises(Cancelled):
        list(client_stream(iter([1, 2]), FakeContext(active=False), "Upsert"))
    with pytest.raises(DeadlineExceeded):
        list(client_stream(iter([1]), FakeContext(remaining=0), "Upsert"))
    assert list(client_stream(iter([1, 2]), FakeContext(), "Upsert")) == [1, 2]


def test_the_request_iterators_rpc_error_is_a_cancellation():
    def raising():
        yield 1
        raise grpc.RpcError()

    with pytest.raises(Cancelled, match="cancelled mid-stream"):
        list(client_stream(raising(), FakeContext(), "Upsert"))


def test_a_closed_gate_admits_no_commit_and_close_waits_for_those_in_progress():
    gate = CommitGate()
    inside, leave = threading.Event(), threading.Event()

    def commit():
        with gate.guard(FakeContext(), "Upsert")():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=commit)
    t.start()
    inside.wait(10)
    closed = threading.Thread(target=gate.close)
    closed.start()
    closed.join(0.2)
    assert closed.is_alive(), "close() returned while a commit it admitted was still running"
    leave.set()
    closed.join(10)
    t.join(10)
    assert not closed.is_alive()
    with pytest.raises(Unavailable, match="shutting down"):
        with gate.guard(FakeContext(), "Upsert")():
            pass
    with pytest.raises(Cancelled):
        with CommitGate().guard(FakeContext(active=False), "Upsert")():
            pass


def test_writes_after_the_gate_closed_store_nothing(gated):
    srv, gate, stub = gated
    stub.Upsert(iter([part("a")]))
    gate.close()
    for call in (lambda: stub.Upsert(iter([part("b")])),
                 lambda: stub.Delete(pb.DeleteRequest(collection="c", ids=["a-0"]))):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in exc.value.details()
    assert srv.service.count("c") == 20


def held_open(parts: int, release: threading.Event, tag: str):
    for j in range(parts):
        yield part(f"{tag}-{j}")
    release.wait(10)


def test_cancelled_streams_store_nothing_and_are_logged_as_cancelled(gated, caplog):
    srv, _, stub = gated
    release = threading.Event()
    with caplog.at_level(logging.INFO, logger="simdex.server"):
        calls = [stub.Upsert.future(held_open(3, release, f"s{s}")) for s in range(6)]
        time.sleep(0.5)  # the messages reach the server
        for f in calls:
            f.cancel()
        release.set()
        for f in calls:
            with pytest.raises(grpc.FutureCancelledError):
                f.result(timeout=10)
        time.sleep(0.5)  # the handlers see the cancellation and return
    assert srv.service.count("c") == 0
    assert "internal error" not in caplog.text
    assert "cancelled" in caplog.text


def test_a_stream_past_its_deadline_stores_nothing(gated):
    srv, _, stub = gated
    release = threading.Event()
    calls = [stub.Upsert.future(held_open(2, release, f"d{s}"), timeout=0.5) for s in range(10)]
    time.sleep(1.0)
    release.set()
    for f in calls:
        with pytest.raises(grpc.RpcError) as exc:
            f.result(timeout=10)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    assert srv.service.count("c") == 0


class WaitingContext(FakeContext):
    """A stream's context whose cancel() ends the read its handler is blocked in, as gRPC's does."""

    def __init__(self):
        super().__init__()
        self.cancelled = threading.Event()

    def cancel(self):
        self.active = False
        self.cancelled.set()


def _blocked_read(gate, context, sent: threading.Event):
    """Run gate.next_request in a thread on a request iterator that yields once `sent` is set, or raises as a
    cancelled read does; returns the thread and the list its outcome lands in."""
    out = []

    def requests():
        while not (sent.is_set() or context.cancelled.is_set()):
            time.sleep(0.005)
        if context.cancelled.is_set():
            raise grpc.RpcError()
        sent.clear()
        yield "request"

    def run():
        try:
            out.append(gate.next_request(requests(), context))
        except grpc.RpcError:
            out.append("cancelled")

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_only_streams_idle_for_the_limit_are_cut_each_wait_timed_afresh():
    now = [100.0]
    gate = CommitGate(stream_idle_s=10.0, clock=lambda: now[0])
    gate._reaper = threading.current_thread()  # no background reaper: this test calls cut_idle itself
    idle, busy = WaitingContext(), WaitingContext()
    t_idle, out_idle = _blocked_read(gate, idle, threading.Event())
    until(lambda: idle in gate._waiting, "the idle stream's read never began")
    now[0] = 105.0
    sent = threading.Event()
    t_busy, out_busy = _blocked_read(gate, busy, sent)  # begins waiting 5 s later
    until(lambda: busy in gate._waiting, "the busy stream's read never began")
    now[0] = 109.9
    assert gate.cut_idle() == 0 and not idle.cancelled.is_set()
    now[0] = 110.0
    assert gate.cut_idle() == 1
    t_idle.join(5)
    assert out_idle == ["cancelled"] and not busy.cancelled.is_set()
    sent.set()  # the busy stream's request arrives: its next wait starts its clock again
    t_busy.join(5)
    assert out_busy == ["request"] and busy not in gate._waiting
    t_busy, out_busy = _blocked_read(gate, busy, sent)
    until(lambda: busy in gate._waiting, "the busy stream's second read never began")
    now[0] = 119.9  # 14.9 s after it first waited, 9.9 s into this wait
    assert gate.cut_idle() == 0
    now[0] = 120.0
    assert gate.cut_idle() == 1
    t_busy.join(5)
    assert out_busy == ["cancelled"]
    assert gate.cut_idle() == 0  # a cut stream is not cut twice


def test_no_idle_limit_cuts_nothing():
    now = [0.0]
    gate = CommitGate(stream_idle_s=0, clock=lambda: now[0])
    ctx = WaitingContext()
    t, out = _blocked_read(gate, ctx, threading.Event())
    until(lambda: ctx in gate._waiting, "the read never began")
    now[0] = 1e9
    assert gate.cut_idle() == 0 and gate._reaper is None
    gate.drain()  # a stop still cancels it
    t.join(5)
    assert out == ["cancelled"]
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="stream_idle_s"):
            CommitGate(stream_idle_s=bad)


def test_a_request_read_as_its_stream_is_cut_is_dropped():
    """The cut and the request can cross: the call is cancelled, so the request is not searched (nobody would read
    the answer); next_request gives None and the handler ends."""
    now = [0.0]
    gate = CommitGate(stream_idle_s=1.0, clock=lambda: now[0])
    gate._reaper = threading.current_thread()  # no background reaper
    ctx = WaitingContext()

    def requests():  # the request arrives just as the cancel does
        ctx.cancelled.wait(5)
        yield "request"

    out = []
    t = threading.Thread(target=lambda: out.append(gate.next_request(requests(), ctx)))
    t.start()
    until(lambda: ctx in gate._waiting, "the read never began")
    now[0] = 1.0
    assert gate.cut_idle() == 1
    t.join(5)
    assert out == [None]


def test_the_reaper_runs_only_while_a_stream_waits_and_ends_with_a_drain():
    gate = CommitGate(stream_idle_s=0.2)  # wakes every 50 ms
    a = WaitingContext()
    t, out = _blocked_read(gate, a, threading.Event())
    until(lambda: a.cancelled.is_set(), "the idle stream was never cut")
    t.join(5)
    assert out == ["cancelled"]
    until(lambda: gate._reaper is None, "the reaper stayed on with nothing waiting")
    b, sent = WaitingContext(), threading.Event()
    t, out = _blocked_read(gate, b, sent)
    until(lambda: b in gate._waiting, "the second read never began")
    until(lambda: gate._reaper is not None and gate._reaper.is_alive(), "the new wait did not start the reaper")
    reaper = gate._reaper
    gate.stream_idle_s = 0  # no more cuts: the drain ends the rest
    gate.drain()
    reaper.join(5)
    assert not reaper.is_alive()
    t.join(5)
    assert out == ["cancelled"] and gate._reaper is None


def test_once_a_stop_began_new_calls_are_refused_unavailable_with_the_reason_and_health_stays_open(gated):
    """A call that reaches a stopping server before gRPC's own shutdown gets UNAVAILABLE naming the method (which
    clients retry elsewhere), not the bare CANCELLED gRPC gives a call it accepted and never handed to a handler."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv, gate, stub = gated
    assert stub.Count(pb.CountRequest(collection="c")).count == 0
    gate.drain()
    for call, method in ((lambda: stub.Count(pb.CountRequest(collection="c")), "Count"),
                         (lambda: stub.Upsert(iter([part("late")])), "Upsert"),
                         (lambda: list(stub.SearchStream(iter([pb.SearchRequest(collection="c", k=1)]))),
                          "SearchStream")):
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ei.value.details().startswith(f"{method}: the server is shutting down; nothing of this call was stored")
    with grpc.insecure_channel(srv.target) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # the app's stop sets NOT_SERVING, not the gate
    assert srv.service.count("c") == 0  # the refused Upsert stored nothing
