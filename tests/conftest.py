"""Shared fixtures: databases (SQLite always, PostgreSQL when SIMDEX_TEST_PG is set), in-process servers on
port 0, and clients of both transports for congruence tests."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

from simdex.defaults import quiet_openmp

quiet_openmp()  # before faiss or torch is imported
# Before grpc is imported: with gRPC core's fork support on, its pthread_atfork handler waits for the process's
# gRPC threads, and a test that forks a server (tests/proc.py: preexec_fn means fork, not vfork) while clients
# are open hung in fork() forever (seen in the replica tests).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

PG_URL = os.environ.get("SIMDEX_TEST_PG", "")


def _pg_schema_url(base: str):
    """A fresh schema in the PostgreSQL test database, so runs never see each other's tables."""
    import sqlalchemy as sa

    schema = f"simdex_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", engine, schema


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """None (SQLite in the data directory) or a URL to a fresh PostgreSQL schema."""
    yield None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def pg_url():
    """A URL to a fresh schema of the PostgreSQL test database (skips when SIMDEX_TEST_PG is not set)."""
    if not PG_URL:
        pytest.skip("SIMDEX_TEST_PG is not set")
    with pg_schema() as url:
        yield url


@contextmanager
def pg_schema():
    """A URL to a fresh schema of the PostgreSQL test database, dropped with all it holds at the end."""
    import sqlalchemy as sa

    url, engine, schema = _pg_schema_url(PG_URL)
    try:
        yield url
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def service(tmp_path, db_url):
    from simdex.service.facade import Simdex

    s = Simdex(tmp_path / "data", db_url, snapshot_interval=0)
    yield s
    s.close()


@pytest.fixture
def sqlite_service(tmp_path):
    from simdex.service.facade import Simdex

    s = Simdex(tmp_path / "data", None, snapshot_interval=0)
    yield s
    s.close()


def crash(service) -> None:
    """As if the process of `service` died: no final snapshot and no clean close, but what the OS ends with a
    process goes (its database connections, its data directory's lock, its thread following other servers)."""
    if service.replication is not None:
        service.replication.close()
    service.engine.dispose()
    service.data_lock.release()


class InProcessServer:
    def __init__(self, data_dir, **kwargs):
        from simdex.service.facade import Simdex
        from simdex.server.app import create_server

        self.service = Simdex(data_dir, kwargs.pop("db_url", None), snapshot_interval=0,
                              limits=kwargs.pop("limits", None), search_backend=kwargs.pop("search_backend", None))
        self.server, self.port, _ = create_server(self.service, "127.0.0.1:0", **kwargs)
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop(grace=None).wait()
        self.service.close()


@pytest.fixture
def server(tmp_path):
    srv = InProcessServer(tmp_path / "srv")
    yield srv
    srv.stop()


@pytest.fixture
def remote(server):
    from simdex.clients import Client

    with Client(server.target) as c:
        yield c


@pytest.fixture
def stub(server):
    """A raw gRPC stub on the `server` fixture, for what only the wire shows (status codes, trailing metadata)."""
    import grpc

    from simdex.proto import simdex_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)])
    yield pb_grpc.SimdexStub(channel)
    channel.close()


class BlockingAsyncClient:
    """An AsyncClient behind blocking methods, for the congruence tests: its coroutines run on an event loop in a
    thread of its own (where its grpc.aio channel is made), and the test waits for each. Its `_transport` is
    wrapped the same way, for tests that drive one RPC of it."""

    def __init__(self, obj, loop, thread=None):
        self._obj, self._loop, self._thread = obj, loop, thread

    @classmethod
    def connect(cls, target: str) -> BlockingAsyncClient:
        import asyncio
        import threading

        from simdex.clients import AsyncClient

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def make():
            return AsyncClient(target)

        return cls(asyncio.run_coroutine_threadsafe(make(), loop).result(), loop, thread)

    def _wait(self, out):
        import asyncio
        import inspect

        return asyncio.run_coroutine_threadsafe(out, self._loop).result() if inspect.iscoroutine(out) else out

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        if name == "_transport":
            return BlockingAsyncClient(value, self._loop)
        if not callable(value):
            return value
        return lambda *args, **kwargs: self._wait(value(*args, **kwargs))

    def close(self) -> None:
        self._wait(self._obj.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@pytest.fixture(params=["remote", "local", "async"])
def client(request, tmp_path):
    """The same tests against Client (gRPC), Client.local (in-process) and AsyncClient (grpc.aio, its calls
    awaited on a loop thread): the congruence of the three."""
    from simdex.clients import Client

    if request.param == "local":
        c = Client.local(str(tmp_path / "local"), snapshot_interval=0)
        yield c
        c.close()
        return
    srv = InProcessServer(tmp_path / "srv")
    c = BlockingAsyncClient.connect(srv.target) if request.param == "async" else Client(srv.target)
    yield c
    c.close()
    srv.stop()


@pytest.fixture
def procs(tmp_path):
    """Starts `simdex serve` processes (tests/proc.py); every one still running at the end of the test is SIGKILLed."""
    from proc import Procs

    p = Procs(tmp_path)
    yield p
    p.cleanup()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A factory of real PACS processes (tests/orthanc.py): `orthanc(auth=None | "basic" | "token")` -> a ready
    OrthancProc on free loopback ports; all are stopped at the end of the module. Without Orthanc, or when it cannot
    start, the test skips, or fails when SIMDEX_REQUIRE_PACS=1 (CI, where `make test` installs it)."""
    from orthanc import OrthancError, OrthancProc, missing
    from orthanc import start as start_orthanc

    started = []

    def unavailable(why: str):
        if os.environ.get("SIMDEX_REQUIRE_PACS") == "1":
            pytest.fail(why)
        pytest.skip(why)

    def start(auth: str | None = None) -> OrthancProc:
        if (why := missing()) is not None:
            unavailable(why)
        try:
            pacs = start_orthanc(tmp_path_factory.mktemp("orthanc"), auth)
        except OrthancError as e:
            unavailable(str(e))
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


def clustered(n: int, d: int, n_clusters: int = 100, seed: int = 0, spread: float = 0.5) -> np.ndarray:
    """(n, d) float32 Gaussian-mixture data: the kind of structure real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)


def oracle(xb: np.ndarray, xq: np.ndarray, k: int, metric: str = "l2"):
    """Exact NumPy brute force: (D, I) with squared L2 ascending or similarity descending."""
    xb64, xq64 = xb.astype(np.float64), xq.astype(np.float64)
    if metric == "cosine":
        xb64 = xb64 / np.linalg.norm(xb64, axis=1, keepdims=True)
        xq64 = xq64 / np.linalg.norm(xq64, axis=1, keepdims=True)
    if metric == "l2":
        S = (xq64 ** 2).sum(1)[:, None] - 2 * xq64 @ xb64.T + (xb64 ** 2).sum(1)[None, :]
        I = np.argsort(S, axis=1, kind="stable")[:, :k]
    else:
        S = xq64 @ xb64.T
        I = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, I, axis=1), I


def recall_at(found_ids: list[list[str]], true_idx: np.ndarray, names: list[str], k: int) -> float:
    hits = sum(len(set(f[:k]) & {names[j] for j in t[:k]}) for f, t in zip(found_ids, true_idx))
    return hits / (len(true_idx) * k)


def until(predicate, what: str, timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds (a bound, not a timing target)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (gave up after {timeout} s)"
        time.sleep(0.005)
