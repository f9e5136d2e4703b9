"""Small requests must not cost gigabytes: hostile Search and Upsert requests against a real `simdex serve`, each
answered with RESOURCE_EXHAUSTED naming the limit and its flag while the server's peak RSS grows by less than
300 MB (it grew by 0.5-2 GB before the budgets)."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from proc import Procs
from simdex.clients import Client
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.wire import pack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAX_GROWTH_MB = 300
N, D = 100_000, 8


def _status_mb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    raise KeyError(key)


class PeakRss:
    """The growth of a process's peak RSS over a block: VmHWM after resetting it (clear_refs), or VmRSS polled
    every few milliseconds where the reset is not allowed."""

    def __init__(self, pid: int):
        self.pid = pid
        self.growth = None

    def __enter__(self):
        self.base = _status_mb(self.pid, "VmRSS")
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")
            self._poll = None
        except OSError:
            self._peak, self._stop = self.base, threading.Event()
            self._poll = threading.Thread(target=self._sample, daemon=True)
            self._poll.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _status_mb(self.pid, "VmRSS"))

    def __exit__(self, *exc):
        if self._poll is None:
            peak = _status_mb(self.pid, "VmHWM")
        else:
            self._stop.set()
            self._poll.join()
            peak = self._peak
        self.growth = peak - self.base
        return False


def matrix(x) -> pb.Matrix:
    data, shape = pack(np.asarray(x, dtype=np.float32))
    return pb.Matrix(data=data, shape=shape)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with a 100,000-item 8-d collection "h" (with metadata) and an empty 128-d collection "u"."""
    work = tmp_path_factory.mktemp("budgets")
    procs = Procs(work)
    try:
        srv = procs.start(work / "data")
        xb = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
        with Client(srv.target) as c:
            c.create_collection("h", D)
            c.create_collection("u", 128)
            for a in range(0, N, 25_000):
                c.upsert("h", [f"i{j}" for j in range(a, a + 25_000)], xb[a:a + 25_000],
                         [{"j": j, "name": f"item number {j}"} for j in range(a, a + 25_000)])
        channel = grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", -1)])
        yield srv, pb_grpc.SimdexStub(channel)
        channel.close()
        assert srv.terminate() == 0, srv.log_tail()
    finally:
        procs.cleanup()


def refused_within_budget(srv, call) -> str:
    with PeakRss(srv.pid) as rss:
        with pytest.raises(grpc.RpcError) as exc:
            call()
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()
    assert rss.growth < MAX_GROWTH_MB, f"peak RSS grew by {rss.growth} MB: {exc.value.details()}"
    assert srv.alive()
    return exc.value.details()


def test_knn_with_a_huge_k_for_many_queries(server):
    srv, stub = server
    xq = np.random.default_rng(1).standard_normal((3000, D))
    req = pb.SearchRequest(collection="h", queries=matrix(xq), k=10_000)  # a 96 KB request, 30 M hits
    assert req.ByteSize() < 100_000
    msg = refused_within_budget(srv, lambda: stub.Search(req, timeout=60))
    assert "3000 queries" in msg


def test_knn_at_the_hit_budget_with_metadata(server):
    srv, stub = server
    xq = np.random.default_rng(2).standard_normal((200, D))  # 2 M hits: within --max-search-results
    req = pb.SearchRequest(collection="h", queries=matrix(xq), k=10_000, include_metadata=True)
    assert "--max-search-metadata" in refused_within_budget(srv, lambda: stub.Search(req, timeout=60))


def test_range_search_matching_everything(server):
    srv, stub = server
    xq = np.random.default_rng(3).standard_normal((200, D))  # 20 M hits
    req = pb.SearchRequest(collection="h", queries=matrix(xq), radius=1e9, page_size=10)
    assert "--max-search-results" in refused_within_budget(srv, lambda: stub.Search(req, timeout=60))


def test_range_search_within_the_budget_answers_one_page(server):
    srv, stub = server
    xq = np.random.default_rng(4).standard_normal((19, D))  # 1.9 M hits found, 19 x 10 returned
    req = pb.SearchRequest(collection="h", queries=matrix(xq), radius=1e9, page_size=10)
    with PeakRss(srv.pid) as rss:
        r = stub.Search(req, timeout=60)
    assert [len(h.ids) for h in r.results] == [10] * 19 and all(h.next_page_token for h in r.results)
    assert rss.growth < MAX_GROWTH_MB


def test_upsert_stream_far_over_its_budget(server):
    srv, stub = server
    x = np.random.default_rng(5).standard_normal((32_000, 128)).astype(np.float32)  # 16 MB a message
    vectors = matrix(x)
    sent = []

    def messages():  # 40 messages, 660 MB: it was all held, then 2-4x more, before the first check
        for m in range(40):
            sent.append(m)
            yield pb.UpsertRequest(collection="u", ids=[f"m{m}-{i}" for i in range(len(x))], vectors=vectors)

    msg = refused_within_budget(srv, lambda: stub.Upsert(messages(), timeout=120))
    assert "--max-upsert-mb" in msg and len(sent) < 40
    time.sleep(0.2)
    with Client(srv.target) as c:
        assert c.count("u") == 0
