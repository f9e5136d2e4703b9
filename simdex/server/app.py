"""create_server() and the `simdex serve` main loop (graceful stop on SIGTERM/SIGINT: the calls in flight get
`--stop-grace-s` seconds; then no write commits any more and the calls still open are cancelled)."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from simdex import defaults
from simdex.embedder.registry import EmbedderPool
from simdex.errors import SimdexError
from simdex.limits import Limits
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.auth import TokenAuth
from simdex.server.calls import CommitGate, RefuseWhileStopping, graceful_stop
from simdex.server.metrics import Metrics, start_metrics_server
from simdex.server.reflection import enable_reflection
from simdex.server.servicer import SimdexServicer
from simdex.server.tokens import Tokens, TokensFileError, from_flags
from simdex.service.facade import Simdex

LOG = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Simdex"].full_name


@dataclass
class Tls:
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path) -> "Tls":
        return cls(Path(cert).read_bytes(), Path(key).read_bytes())


def create_server(service: Simdex, address: str = "127.0.0.1:0", *, token: str | None = None,
                  tls: Tls | None = None, max_message_mb: float = defaults.MAX_MESSAGE_MB,
                  workers: int = 16, gate: CommitGate | None = None, tokens: Tokens | None = None,
                  metrics: Metrics | None = None, search_streams: int = defaults.SEARCH_STREAMS):
    """A started-ready (not started) gRPC server for `service`. Returns (server, bound port, health servicer).

    `token` (one admin token) or `tokens` (scoped ones, simdex.server.tokens) require a bearer token; `metrics`
    counts and times the calls (serve its registry with metrics.start_metrics_server). `search_streams`
    SearchStream calls may be open at once; the thread pool has `workers` threads for the other calls besides.

    `gate` admits the writes' commits; `graceful_stop(server, gate, grace)` closes it before cutting the calls
    still open, so that none of them commits afterwards."""
    max_bytes = int(max_message_mb * 1024 * 1024)
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),
        # pings while calls are open, so that a SearchStream of a peer that vanished is cut within minutes
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if token and tokens:
        raise ValueError("give token or tokens, not both")
    auth = tokens or (Tokens.single(token) if token else None)
    gate = gate or CommitGate()
    interceptors = []
    if metrics:
        metrics.watch(service)
        interceptors.append(metrics.interceptor)  # first, so that it counts the refusals too
    interceptors.append(RefuseWhileStopping(gate))
    if auth:
        interceptors.append(TokenAuth(auth, lambda head: service.get_head(head).collection))
    pool = futures.ThreadPoolExecutor(max_workers=workers + max(0, search_streams), thread_name_prefix="grpc")
    server = grpc.server(pool, options=options, interceptors=interceptors)
    pb_grpc.add_SimdexServicer_to_server(SimdexServicer(service, max_bytes, gate, search_streams), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    try:
        if tls:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls.key, tls.cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises instead of returning 0 when the port is taken
        raise OSError(f"could not bind {address}: {exc}") from None
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port, health_servicer


def serve(data_dir: str, host: str = "127.0.0.1", port: int = 50051, db_url: str | None = None,
          token_file: str | None = None, tls: Tls | None = None,
          max_message_mb: float = defaults.MAX_MESSAGE_MB, snapshot_interval: float = defaults.SNAPSHOT_INTERVAL_S,
          weights: dict[str, str] | None = None, device: str | None = None, limits: Limits | None = None,
          tokens_file: str | None = None, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
          search_backend: str | None = None, search_streams: int = defaults.SEARCH_STREAMS,
          stream_idle_s: float = defaults.SERVER_STREAM_IDLE_S) -> None:
    """Run a server until SIGTERM/SIGINT. `weights` maps embedder names to weights files (default: the torch hub
    cache); `device` is where embedders run ("cpu", "cuda"; default: the GPU when there is one). `metrics_port`
    (0: any free one) serves Prometheus metrics at http://metrics_host:port/metrics. `search_backend`: "auto",
    "faiss" or "torch" (None: env SIMDEX_SEARCH_BACKEND, else auto; see index.torch_ann). A SearchStream waiting
    `stream_idle_s` seconds for its next search is cancelled (0: never)."""
    try:
        tokens = from_flags(token_file, tokens_file)
    except TokensFileError as exc:
        raise SystemExit(f"simdex: {exc}") from None
    try:
        pool = EmbedderPool(weights, device)
    except SimdexError as exc:
        raise SystemExit(f"simdex: {exc.message}") from None
    try:
        service = Simdex(data_dir, db_url, snapshot_interval=snapshot_interval, embedders=pool, limits=limits,
                         search_backend=search_backend)
    except SimdexError as exc:  # a bad SIMDEX_SEARCH_BACKEND or SIMDEX_TORCH_STORAGE
        raise SystemExit(f"simdex: {exc.message}") from None
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    gate = CommitGate(stream_idle_s)
    metrics = Metrics() if metrics_port is not None else None
    try:
        server, bound, health_servicer = create_server(service, address, tls=tls, max_message_mb=max_message_mb,
                                                       gate=gate, tokens=tokens, metrics=metrics,
                                                       search_streams=search_streams)
        metrics_http = start_metrics_server(metrics, metrics_host, metrics_port) if metrics else None
    except OSError as exc:
        service.close()
        raise SystemExit(f"simdex: {exc} (is another server running on that port?)") from None
    server.start()
    if metrics_http:
        print(f"simdex metrics on http://{metrics_host}:{metrics_http.server_address[1]}/metrics", flush=True)
    LOG.info("simdex serving on %s:%d (data %s, db %s)", host, bound, data_dir,
             service.engine.url.render_as_string(hide_password=True))
    print(f"simdex listening on {host}:{bound}", flush=True)
    done = threading.Event()

    def _stop(signum, _frame):
        LOG.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done.wait()
    health_servicer.enter_graceful_shutdown()
    graceful_stop(server, gate, service.limits.stop_grace_s)
    if metrics_http:
        metrics_http.shutdown()
        metrics_http.server_close()
    service.close()
    LOG.info("simdex stopped")
