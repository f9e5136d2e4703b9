"""SIGTERM against a real `simdex serve`: an Upsert stream still open when the grace period ends is cancelled and
nothing of it is stored (seen after a restart); streams that finish within the grace period are stored."""
from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest

from simdex.clients import Client
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.wire import pack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DIM = 8
STREAMS = 8       # open at once: gRPC's iterator ended quietly (and the part received was stored) in ~3 of 7 runs
PARTS = 3         # messages each stream sends before it waits
PER_PART = 50


def part(s: int, j: int) -> pb.UpsertRequest:
    x = np.random.default_rng(s * 100 + j).standard_normal((PER_PART, DIM)).astype(np.float32)
    data, shape = pack(x)
    return pb.UpsertRequest(collection="t", ids=[f"s{s}-{j}-{i}" for i in range(PER_PART)],
                            vectors=pb.Matrix(data=data, shape=shape), metadata=['{"s": %d}' % s] * PER_PART)


class OpenStream(threading.Thread):
    """One Upsert stream that sends PARTS messages, then stays open until `release` is set."""

    def __init__(self, target: str, s: int, sent: threading.Barrier, release: threading.Event):
        super().__init__(daemon=True)
        self.target, self.s, self.sent, self.release = target, s, sent, release
        self.code: grpc.StatusCode | None = None
        self.reply = None

    def messages(self):
        for j in range(PARTS):
            yield part(self.s, j)
        self.sent.wait(timeout=30)
        self.release.wait(timeout=60)

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            try:
                self.reply = pb_grpc.SimdexStub(channel).Upsert(self.messages(), timeout=60)
            except grpc.RpcError as exc:
                self.code = exc.code()


def test_streams_open_past_the_grace_period_store_nothing(procs, tmp_path, db_url):
    data = tmp_path / "data"
    args = ("--stop-grace-s", "1") + (("--db", db_url) if db_url else ())
    srv = procs.start(data, *args)
    with Client(srv.target) as c:
        c.create_collection("t", DIM)
        c.upsert("t", ["before"], np.ones((1, DIM), np.float32))
    sent, release = threading.Barrier(STREAMS + 1), threading.Event()
    streams = [OpenStream(srv.target, s, sent, release) for s in range(STREAMS)]
    for t in streams:
        t.start()
    try:
        sent.wait(timeout=30)  # every stream has handed its messages to gRPC and now holds the call open
        time.sleep(0.5)  # for them to reach the server (a few KB on loopback)
        assert srv.terminate(timeout=30) == 0, srv.log_tail()
    finally:
        release.set()
        for t in streams:
            t.join(timeout=30)
    assert all(t.reply is None and t.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
               for t in streams), [(t.reply, t.code) for t in streams]
    first = srv
    srv = procs.start(data, *args)
    with Client(srv.target) as c:
        stored = c.count("t", {"s": {"$gte": 0}})
        assert stored == 0, f"{stored} items of streams cut at the end of the grace period were stored"
        assert c.count("t") == 1 and c.get_collection("t").seq == 1
    assert srv.terminate() == 0
    log = first.log_text()
    assert "grace period of 1.0 s over" in log and "internal error" not in log, first.log_tail()


def test_a_stream_finished_within_the_grace_period_is_stored(procs, tmp_path):
    data = tmp_path / "data"
    srv = procs.start(data, "--stop-grace-s", "20")
    with Client(srv.target) as c:
        c.create_collection("t", DIM)
    sent, release = threading.Barrier(2), threading.Event()
    stream = OpenStream(srv.target, 0, sent, release)
    stream.start()
    try:
        sent.wait(timeout=30)
        time.sleep(0.2)
        srv.signal(signal.SIGTERM)  # the stream is open, and finishes a moment later
        threading.Timer(0.5, release.set).start()
        stream.join(timeout=30)
        assert srv.popen.wait(timeout=30) == 0, srv.log_tail()
    finally:
        release.set()
        stream.join(timeout=30)
    assert stream.code is None and stream.reply.upserted == PARTS * PER_PART, stream.code
    srv = procs.start(data)
    with Client(srv.target) as c:
        assert c.count("t") == PARTS * PER_PART
    assert srv.terminate() == 0
