"""What bench/search.py measures against: the seeded data, the FAISS index simdex would build, the bare grpcio
servers (echo, and gRPC + FAISS without simdex) run in a subprocess, and the report's header."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 10
N_QUERIES = 1000
BASELINE_SERVICE = "simdexbench.Baseline"
ECHO = f"/{BASELINE_SERVICE}/Echo"      # returns a fixed payload
SEARCH = f"/{BASELINE_SERVICE}/Search"  # runs FAISS on the query in the request's last 4*d bytes, then the same
LOAD = f"/{BASELINE_SERVICE}/Load"      # builds the index: JSON {"index": desc, "resp_bytes": int}


def ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_data(n: int, d: int, nq: int, clusters: int = 50, spread: float = 0.15):
    """(n, d) base vectors and (nq, d) held-out queries from one seeded Gaussian mixture."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    labels = rng.integers(0, clusters, n + nq)
    x = (centres[labels] + spread * rng.standard_normal((n + nq, d))).astype(np.float32)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


def build_index(desc: str, xb: np.ndarray, chunk: int):
    """The FAISS index simdex would build for `desc` (l2), its search parameters, and the seconds spent in add."""
    from simdex.index.ann import _walk_params, make_faiss_index
    from simdex.types import SearchParams

    index = make_faiss_index(xb.shape[1], "l2", desc)  # with simdex's construction settings (efConstruction)
    if not index.is_trained:
        index.train(xb[:100_000])
    t_add = 0.0
    for i in range(0, len(xb), chunk):
        t0 = time.perf_counter()
        index.add(xb[i:i + chunk])
        t_add += time.perf_counter() - t0
    keep: list = []
    params = _walk_params(index, SearchParams(), None, keep)  # exactly the SearchParameters simdex passes (efSearch...)
    return index, params, keep, t_add


# ---- the bare grpcio servers (one subprocess) ----------------------------------------------------------
def serve_baseline(n: int, d: int, chunk: int) -> None:
    """Generic unary handlers with identity (bytes) serializers: Echo, Search (FAISS, no simdex code), Load."""
    from concurrent import futures

    import faiss
    import grpc

    xb, _ = make_data(n, d, N_QUERIES)
    state: dict = {"payload": b""}

    def echo(request: bytes, context) -> bytes:
        return state["payload"]

    def search(request: bytes, context) -> bytes:
        faiss.omp_set_num_threads(1)  # per calling thread, as simdex does for single queries
        q = np.frombuffer(request, dtype=np.float32, count=d, offset=len(request) - 4 * d).reshape(1, d)
        state["index"].search(q, K, params=state["params"])
        return state["payload"]

    def load(request: bytes, context) -> bytes:
        spec = json.loads(request)
        state.pop("index", None)
        state["index"], state["params"], state["keep"], _ = build_index(spec["index"], xb, chunk)
        state["payload"] = b"\x01" * int(spec["resp_bytes"])
        return b"ok"

    mb = 64 * 1024 * 1024  # the thread pool and message options of simdex's create_server
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", mb), ("grpc.max_send_message_length", mb),
                                  ("grpc.so_reuseport", 0)])
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                (("Echo", echo), ("Search", search), ("Load", load))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(BASELINE_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"baseline listening on 127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.stop(grace=None).wait()


def start_process(argv: list[str], log: Path, marker: str) -> tuple[subprocess.Popen, int]:
    """Start a server process; wait for its '<marker> HOST:PORT' line; return (process, port)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "wb"),
                            text=True, env=dict(os.environ))
    line = proc.stdout.readline()
    if not line.startswith(marker):
        proc.kill()
        proc.wait()
        raise SystemExit(f"{shlex.join(argv)} did not start (got {line!r}); its log:\n{log.read_text()[-3000:]}")
    return proc, int(line.rsplit(":", 1)[1])


def stop_process(proc: subprocess.Popen, sigterm: bool) -> None:
    if proc.poll() is None:
        if sigterm:
            proc.terminate()
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def header(args, work: Path) -> str:
    import faiss
    import google.protobuf
    import grpc
    import sqlalchemy

    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        fs = subprocess.run(["df", "--output=fstype,source", str(work)], capture_output=True,
                            text=True).stdout.split("\n", 1)[1].strip() or "?"
    except (OSError, IndexError):
        fs = "?"
    cmd = shlex.join([sys.executable, *sys.argv])
    return "\n".join([
        "# simdex benchmark",
        "",
        f"- command: `{cmd}`",
        f"- machine: {ncpu()} usable cores ({os.cpu_count()} online), {cpu}, {platform.platform()}",
        f"- python {platform.python_version()}, faiss {faiss.__version__}, grpcio {grpc.__version__}, "
        f"protobuf {google.protobuf.__version__}, numpy {np.__version__}, sqlalchemy {sqlalchemy.__version__}",
        f"- OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, faiss max threads {faiss.omp_get_max_threads()}",
        f"- data: n={args.n:,} base vectors, d={args.d}, {N_QUERIES} held-out queries, Gaussian mixture "
        f"(50 clusters, default_rng(0)), metric l2, k={K}; --seconds {args.seconds:g} per path and measurement",
        f"- servers: `simdex serve` and the bare grpcio baselines each in their own subprocess on 127.0.0.1; "
        f"data in {work} ({fs})",
    ])
