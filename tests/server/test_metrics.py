"""Prometheus metrics: a real server's /metrics, scraped over HTTP after known calls, holds exactly their counts
(RPCs by method and code, latency histograms, vectors and bytes per collection, index kind, training, snapshots,
embedded items by embedder, process memory); `simdex serve --metrics-port` serves it on loopback."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.metrics import Metrics, start_metrics_server

X = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
EMB = "densenet-bc-random"  # small and random weights: nothing to download


def matrix(x: np.ndarray) -> pb.Matrix:
    return pb.Matrix(data=x.astype("<f4").tobytes(), shape=list(x.shape))


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value} of one GET of `url`."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def rpc(method: str, code: str = "OK") -> dict:
    return {"service": "simdex.v1.Simdex", "method": method, "code": code}


@pytest.fixture
def metered(tmp_path):
    """A real server with metrics, its /metrics served on a free loopback port, and a raw stub on it."""
    from conftest import InProcessServer

    metrics = Metrics()
    srv = InProcessServer(tmp_path / "srv", metrics=metrics)
    http = start_metrics_server(metrics, "127.0.0.1", 0)
    channel = grpc.insecure_channel(srv.target)
    srv.stub, srv.url = pb_grpc.SimdexStub(channel), f"http://127.0.0.1:{http.server_address[1]}/metrics"
    yield srv
    channel.close()
    http.shutdown()
    http.server_close()
    srv.stop()


def test_rpc_counts_and_latencies_by_method_and_code(metered):
    s = metered.stub
    s.CreateCollection(pb.CreateCollectionRequest(name="a", dim=4))
    s.Upsert(iter([pb.UpsertRequest(collection="a", ids=[f"i{j}" for j in range(10)], vectors=matrix(X))]))
    t0 = time.perf_counter()
    for q in range(3):
        s.Search(pb.SearchRequest(collection="a", queries=matrix(X[q:q + 1]), k=2))
    searching = time.perf_counter() - t0
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as ei:
            s.GetCollection(pb.GetCollectionRequest(name="missing"))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError):  # refused in the stream reader: the client stream is counted too
        s.Upsert(iter([pb.UpsertRequest(collection="a", ids=["x"], vectors=matrix(X[:1, :3]))]))
    got = scrape(metered.url)
    assert value(got, "simdex_rpc_requests_total", **rpc("CreateCollection")) == 1
    assert value(got, "simdex_rpc_requests_total", **rpc("Upsert")) == 1
    assert value(got, "simdex_rpc_requests_total", **rpc("Upsert", "INVALID_ARGUMENT")) == 1
    assert value(got, "simdex_rpc_requests_total", **rpc("Search")) == 3
    assert value(got, "simdex_rpc_requests_total", **rpc("GetCollection", "NOT_FOUND")) == 2
    assert value(got, "simdex_rpc_requests_total", **rpc("GetCollection")) is None
    assert value(got, "simdex_rpc_duration_seconds_count", **rpc("Search")) == 3
    # seconds, each call timed inside its round trip: no more than the client waited for the three
    assert 0 < value(got, "simdex_rpc_duration_seconds_sum", **rpc("Search")) <= searching
    assert value(got, "simdex_rpc_duration_seconds_bucket", le="+Inf", **rpc("Search")) == 3
    assert value(got, "process_resident_memory_bytes") > 10 * 2 ** 20


def test_each_search_of_a_stream_counts_as_a_call_and_so_does_the_error_ending_it(metered):
    s = metered.stub
    s.CreateCollection(pb.CreateCollectionRequest(name="a", dim=4))
    s.Upsert(iter([pb.UpsertRequest(collection="a", ids=[f"i{j}" for j in range(10)], vectors=matrix(X))]))
    req = pb.SearchRequest(collection="a", queries=matrix(X[:1]), k=2)
    bad = pb.SearchRequest(collection="a", queries=matrix(X[:1, :3]), k=2)  # the wrong dimension
    t0 = time.perf_counter()
    assert len(list(s.SearchStream(iter([req] * 3)))) == 3
    with pytest.raises(grpc.RpcError) as ei:
        list(s.SearchStream(iter([req, bad, req])))
    searching = time.perf_counter() - t0
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = scrape(metered.url)
    assert value(got, "simdex_rpc_requests_total", **rpc("SearchStream")) == 4  # 3 + 1 answered before the error
    assert value(got, "simdex_rpc_requests_total", **rpc("SearchStream", "INVALID_ARGUMENT")) == 1
    assert value(got, "simdex_rpc_duration_seconds_count", **rpc("SearchStream")) == 4
    assert 0 < value(got, "simdex_rpc_duration_seconds_sum", **rpc("SearchStream")) <= searching


def test_collections_their_kind_training_and_snapshots(metered):
    s, svc = metered.stub, metered.service
    s.CreateCollection(pb.CreateCollectionRequest(name="flat", dim=4))
    s.CreateCollection(pb.CreateCollectionRequest(name="ivf", dim=4, metric="cosine", index="IVF4,Flat"))
    s.Upsert(iter([pb.UpsertRequest(collection="flat", ids=[f"i{j}" for j in range(10)], vectors=matrix(X))]))
    s.Upsert(iter([pb.UpsertRequest(collection="ivf", ids=["a", "b", "c"], vectors=matrix(X[:3]))]))
    s.Delete(pb.DeleteRequest(collection="flat", ids=["i0", "i1"]))
    got = scrape(metered.url)
    assert value(got, "simdex_collection_vectors", collection="flat") == 8
    assert value(got, "simdex_collection_vectors", collection="ivf") == 3
    assert value(got, "simdex_collection_vector_bytes", collection="flat") == 8 * 4 * 4
    assert value(got, "simdex_collection_info", collection="ivf", index="IVF4,Flat", metric="cosine",
                 embedder="") == 1
    assert value(got, "simdex_collection_trained", collection="flat") == 1
    assert value(got, "simdex_collection_trained", collection="ivf") == 0  # too few vectors to train IVF4
    assert value(got, "simdex_collection_unavailable", collection="flat") == 0
    assert value(got, "simdex_snapshot_stale", collection="flat") == 1
    assert value(got, "simdex_snapshot_age_seconds", collection="flat") is None  # none written yet
    before = time.time()
    assert svc.snapshot() == 2
    got = scrape(metered.url)
    path = svc.collections.get("flat").path
    assert value(got, "simdex_snapshot_stale", collection="flat") == 0
    assert value(got, "simdex_snapshot_bytes", collection="flat") == os.stat(path).st_size
    assert 0 <= value(got, "simdex_snapshot_age_seconds", collection="flat") <= time.time() - before + 1
    s.DeleteCollection(pb.DeleteCollectionRequest(name="ivf"))
    got = scrape(metered.url)
    assert not any(dict(labels).get("collection") == "ivf" for _, labels in got)


def test_embedded_items_and_seconds_by_embedder(metered):
    from PIL import Image

    def png(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    s = metered.stub
    s.Embed(pb.EmbedRequest(embedder=EMB, images=[png(i) for i in range(3)]))
    s.CreateCollection(pb.CreateCollectionRequest(name="scans", embedder=EMB))
    s.Upsert(iter([pb.UpsertRequest(collection="scans", ids=["p", "q"], images=[png(7), png(8)])]))
    s.Search(pb.SearchRequest(collection="scans", images=[png(9)], k=1))
    with pytest.raises(grpc.RpcError):  # a failed embedding counts nothing
        s.Embed(pb.EmbedRequest(embedder=EMB, images=[b"not an image"]))
    got = scrape(metered.url)
    assert value(got, "simdex_embed_items_total", embedder=EMB) == 3 + 2 + 1
    assert value(got, "simdex_embed_seconds_total", embedder=EMB) > 0
    assert value(got, "simdex_collection_info", collection="scans", index="Flat", metric="l2", embedder=EMB) == 1


def test_refused_calls_are_counted_with_their_code(tmp_path):
    from conftest import InProcessServer

    metrics = Metrics()
    srv = InProcessServer(tmp_path / "srv", metrics=metrics, token="s3cret")
    http = start_metrics_server(metrics)
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.SimdexStub(ch)
            for _ in range(2):
                with pytest.raises(grpc.RpcError):
                    stub.ListCollections(pb.ListCollectionsRequest())
            stub.ListCollections(pb.ListCollectionsRequest(), metadata=[("authorization", "Bearer s3cret")])
        got = scrape(f"http://127.0.0.1:{http.server_address[1]}/metrics")
        assert value(got, "simdex_rpc_requests_total", **rpc("ListCollections", "UNAUTHENTICATED")) == 2
        assert value(got, "simdex_rpc_requests_total", **rpc("ListCollections")) == 1
    finally:
        http.shutdown()
        http.server_close()
        srv.stop()


def test_two_servers_in_one_process_keep_their_numbers_apart(metered, tmp_path):
    from conftest import InProcessServer

    other = Metrics()
    srv = InProcessServer(tmp_path / "other", metrics=other)
    try:
        with pytest.raises(grpc.RpcError):
            metered.stub.Count(pb.CountRequest(collection="nope"))
        got = {(s.name, frozenset(s.labels.items())): s.value for f in other.registry.collect() for s in f.samples}
        assert value(got, "simdex_rpc_requests_total", **rpc("Count", "NOT_FOUND")) is None
        assert value(scrape(metered.url), "simdex_rpc_requests_total", **rpc("Count", "NOT_FOUND")) == 1
    finally:
        srv.stop()


def test_serve_metrics_port_serves_on_loopback(tmp_path):
    """`simdex serve --metrics-port 0` (a free port) serves /metrics on 127.0.0.1; without the flag, none."""
    proc = subprocess.Popen([sys.executable, "-m", "simdex.cli.main", "serve", "--data", str(tmp_path / "d"),
                             "--port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "simdex listening on" in line:
                break
        found = [m for ln in lines if (m := re.search(r"simdex metrics on (http://127\.0\.0\.1:\d+/metrics)", ln))]
        assert found, "".join(lines)
        got = scrape(found[0][1])
        assert value(got, "process_resident_memory_bytes") > 0
        assert not any(name.startswith("simdex_collection") for name, _ in got)  # no collections yet
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
