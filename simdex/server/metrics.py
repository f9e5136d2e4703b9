"""Prometheus metrics of one server (`simdex serve --metrics-port P`): RPC counts and latencies by method and
status code (an interceptor), each collection's vectors, bytes, index kind, trained state and snapshot, the
embedders' items and seconds, and the process (memory, CPU, open files).

Each Metrics has a registry of its own, never prometheus_client's global one, so that several servers in one
process (the tests) keep their numbers apart. The service's numbers are read at scrape time from what the service
keeps in memory (counts, flags, a stat of the snapshot file): a scrape takes no lock that a write or a search
waits on.
"""
from __future__ import annotations

import os
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from simdex.server.handlers import method_name, rewrap
from simdex.service.collections import Unloadable
from simdex.service.facade import Simdex

RPC_LABELS = ("service", "method", "code")
# From a cached single-vector search (well under a millisecond) to an embedding or clustering call of a minute.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The registry of one server: `interceptor` counts and times its RPCs; `watch(service)` (create_server calls
    it) adds the service's numbers."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("simdex_rpc_requests", "RPCs answered, by service, method and status code",
                                RPC_LABELS, registry=self.registry)
        self.duration = Histogram("simdex_rpc_duration_seconds", "Time from the call's start to its answer",
                                  RPC_LABELS, buckets=RPC_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.interceptor = RpcMetrics(self)

    def watch(self, service: Simdex) -> None:
        """Report `service`'s collections and embedders (once: a second service would repeat their names)."""
        self.registry.register(ServiceCollector(service))

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.requests.labels(service, method, code).inc()
        self.duration.labels(service, method, code).observe(seconds)


def start_metrics_server(metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
    """Serve `metrics` at http://HOST:PORT/metrics on a daemon thread -> the HTTP server (its bound port is
    `server.server_address[1]`; `shutdown()` then `server_close()` stop it). OSError when it cannot bind."""
    httpd, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return httpd


def _code(context, failed: bool) -> str:
    """The status the call ends with: the code the servicer set (abort sets it too), else OK, or UNKNOWN (what gRPC
    answers) for an exception that set none."""
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return getattr(code, "name", str(code))


class RpcMetrics(grpc.ServerInterceptor):
    """Counts and times every call (authentication refusals included, when this interceptor comes first). The
    numbers are recorded before the answer leaves, so a client that has its answer sees them counted. A stream of
    requests each with its answer (SearchStream) counts each answer as a call, and the error that ends it."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        service, method = method_name(details.method)
        observe = self.metrics.observe

        def unary_answer(behaviour):
            def call(request, context):
                t0, failed = time.perf_counter(), True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    observe(service, method, _code(context, failed), time.perf_counter() - t0)

            return call

        def streamed_answer(behaviour):
            def call(request, context):
                t0, failed, code = time.perf_counter(), True, None
                try:
                    yield from behaviour(request, context)
                    failed = False
                except GeneratorExit:  # the client went away mid-stream
                    code = "CANCELLED"
                    raise
                finally:
                    observe(service, method, code or _code(context, failed), time.perf_counter() - t0)

            return call

        def each_answered(behaviour):  # SearchStream: a sample per answer (from its request's read), none per call
            def call(requests, context):
                read = [time.perf_counter()]

                def timed():
                    for request in requests:
                        read[0] = time.perf_counter()
                        yield request

                failed = True
                try:
                    for response in behaviour(timed(), context):
                        observe(service, method, "OK", time.perf_counter() - read[0])
                        yield response
                    failed = False
                except GeneratorExit:  # closed at a yield: its search was answered (and counted) already
                    failed = False
                    raise
                finally:
                    if failed:  # the error that ended the stream: one sample of its own
                        observe(service, method, _code(context, True), time.perf_counter() - read[0])

            return call

        if handler.request_streaming and handler.response_streaming:
            return rewrap(handler, each_answered)
        return rewrap(handler, streamed_answer if handler.response_streaming else unary_answer)


class ServiceCollector:
    """The service's numbers at scrape time, one sample per collection (or embedder)."""

    def __init__(self, service: Simdex):
        self.service = service

    def collect(self):
        by_collection = ["collection"]
        info = InfoMetricFamily("simdex_collection", "The collection's index kind, metric and embedder",
                                labels=by_collection)
        unavailable = GaugeMetricFamily("simdex_collection_unavailable",
                                        "1 when the collection's stored data could not be loaded at start",
                                        labels=by_collection)
        vectors = GaugeMetricFamily("simdex_collection_vectors", "Live items (vectors) in the collection",
                                    labels=by_collection)
        vector_bytes = GaugeMetricFamily("simdex_collection_vector_bytes",
                                         "Bytes of the live float32 vectors (items x dim x 4)", labels=by_collection)
        trained = GaugeMetricFamily("simdex_collection_trained", "1 when the index kind's training is done (or it "
                                    "needs none); 0 while it answers by exact search", labels=by_collection)
        snap_age = GaugeMetricFamily("simdex_snapshot_age_seconds",
                                     "Seconds since the collection's index snapshot file was written",
                                     labels=by_collection)
        snap_bytes = GaugeMetricFamily("simdex_snapshot_bytes", "Size of the collection's index snapshot file",
                                       labels=by_collection)
        snap_stale = GaugeMetricFamily("simdex_snapshot_stale", "1 while changes committed since the last snapshot "
                                       "are not in it (a restart replays them from the database)",
                                       labels=by_collection)
        lag_s = GaugeMetricFamily("simdex_replica_lag_seconds", "Servers on one PostgreSQL database: seconds since "
                                  "this one learned of a commit its index still lacks (0 when caught up)",
                                  labels=by_collection)
        behind = GaugeMetricFamily("simdex_catchup_seq_behind", "Servers on one PostgreSQL database: the newest "
                                   "sequence number known less the one the index is at", labels=by_collection)
        replication = self.service.replication
        now = time.time()
        for col in self.service.collections.all():
            name = [col.name]
            unloadable = isinstance(col, Unloadable)
            r = col.record if unloadable else col.info
            info.add_metric(name, {"index": r.index, "metric": r.metric, "embedder": r.embedder})
            unavailable.add_metric(name, int(unloadable))
            if unloadable:
                continue
            n = col.ann.n_live
            vectors.add_metric(name, n)
            vector_bytes.add_metric(name, n * r.dim * 4)
            trained.add_metric(name, int(col.ann.trained))
            snap_stale.add_metric(name, int(col.snap_seq != col.seq))
            if replication is not None:
                lag = replication.lag(col)
                lag_s.add_metric(name, lag.seconds)
                behind.add_metric(name, lag.seq_behind)
            try:
                st = os.stat(col.path)
            except OSError:  # no snapshot written yet
                continue
            snap_age.add_metric(name, max(0.0, now - st.st_mtime))
            snap_bytes.add_metric(name, st.st_size)
        items = CounterMetricFamily("simdex_embed_items", "Raw items (images, texts) embedded, by embedder",
                                    labels=["embedder"])
        seconds = CounterMetricFamily("simdex_embed_seconds", "Seconds spent embedding raw items, by embedder",
                                      labels=["embedder"])
        for embedder, (n, s) in sorted(self.service.embedding.counts.totals().items()):
            items.add_metric([embedder], n)
            seconds.add_metric([embedder], s)
        yield from (info, unavailable, vectors, vector_bytes, trained, snap_age, snap_bytes, snap_stale, lag_s, behind,
                    items, seconds)
