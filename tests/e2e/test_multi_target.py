"""One client over several real `simdex serve` processes (simdex.clients.targets): calls spread over the servers,
kill -9 of one under 8-client search load fails no search, and an Upsert cut by a kill is sent again only when
the server cannot have stored it.

Each server has its own SQLite data with the same items loaded: the client does not care whether they replicate.
Per-server counts come from each server's Prometheus endpoint (`--metrics-port`).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import oracle
from proc import Procs, ServerProc, free_port
from simdex.clients import Client, Unavailable
from simdex.types import UpsertChunk

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DIM, N, K = 16, 2000, 5
COL = "multi"
THREADS = 8


def start_metered(procs: Procs, data) -> tuple[ServerProc, int]:
    """A ready server with --metrics-port, and that port."""
    port = free_port()
    return procs.start(data, "--metrics-port", str(port)), port


def served(metrics_port: int, method: str) -> float:
    """How many `method` calls the server with this metrics port answered OK."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "simdex_rpc_requests_total" and s.labels.get("method") == method
               and s.labels.get("code") == "OK")


def dataset(seed: int = 0) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((N, DIM)).astype(np.float32)
    return [f"v{i}" for i in range(N)], x


def load(target: str, index: str = "Flat") -> None:
    ids, x = dataset()
    with Client(target) as c:
        c.create_collection(COL, DIM, "l2", index)
        c.upsert(COL, ids, x)


def test_kill9_of_one_of_three_servers_under_search_load_fails_no_search(procs, tmp_path):
    servers = [start_metered(procs, tmp_path / f"data{i}") for i in range(3)]
    for s, _ in servers:
        load(s.target)
    ids, xb = dataset()
    xq = np.random.default_rng(1).standard_normal((64, DIM)).astype(np.float32)
    _, want = oracle(xb, xq, K)
    targets = [s.target for s, _ in servers]
    stop, searches, failures, wrong = threading.Event(), [0] * THREADS, [], []

    def searcher(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        with Client(targets, timeout=30) as c:
            while not stop.is_set():
                q = int(rng.integers(len(xq)))
                try:
                    got = c.search(COL, xq[q], k=K).ids[0]
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none may happen
                    failures.append(repr(exc))
                    continue
                if got != [ids[i] for i in want[q]]:
                    wrong.append((q, got))
                searches[t] += 1

    threads = [threading.Thread(target=searcher, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    try:
        deadline = time.monotonic() + 60
        while sum(searches) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = [served(port, "Search") for _, port in servers]
        servers[0][0].kill()
        at_kill = sum(searches)
        while sum(searches) < at_kill + 600 and time.monotonic() < deadline + 60:
            time.sleep(0.05)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    after = [served(port, "Search") for _, port in servers[1:]]
    assert failures == [], failures[:5]
    assert wrong == [], wrong[:5]
    assert sum(searches) >= at_kill + 600, searches
    assert all(b > 0 for b in before), f"each server served searches before the kill: {before}"
    assert all(a > b for a, b in zip(after, before[1:])), f"survivors served the rest: {before[1:]} -> {after}"


class PausedOnce(list):
    """Upsert chunks whose first pass stops after the first chunk until `resume` is set: the first attempt's stream
    is held open mid-way. Later passes (the client's retries) go straight through."""

    def __init__(self, chunks):
        super().__init__(chunks)
        self.started, self.resume, self._passes = threading.Event(), threading.Event(), 0

    def __iter__(self):
        self._passes += 1
        if self._passes > 1:
            yield from super().__iter__()
            return
        first, *rest = super().__iter__()
        yield first
        self.started.set()
        self.resume.wait(120)
        yield from rest


def chunks(n: int, seed: int, parts: int = 2) -> tuple[list[str], list[UpsertChunk]]:
    ids = [f"u{seed}-{i}" for i in range(n)]
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    metas = [json.dumps({"i": i}) for i in range(n)]
    step = -(-n // parts)
    return ids, [UpsertChunk(ids[a:a + step], x[a:a + step], metas[a:a + step], []) for a in range(0, n, step)]


def restart(procs: Procs, proc: ServerProc, tmp_path, name: str) -> ServerProc:
    """A new server on `proc`'s data, port and flags (the client's target list names the port)."""
    again = ServerProc(proc.data, tmp_path / f"{name}.log", proc.port, proc.args, None, None)
    procs.started.append(again)
    again.wait_ready()
    return again


def test_upsert_cut_mid_stream_by_kill9_is_sent_again_to_another_server(procs, tmp_path, caplog):
    a = procs.start(tmp_path / "a")
    load(a.target)
    b, b_metrics = start_metered(procs, tmp_path / "b")
    load(b.target)
    b.kill()  # down while the stream starts, so that the stream can only go to a
    ids, parts = chunks(300, seed=7)
    paused = PausedOnce(parts)
    out: list = []
    caplog.set_level(logging.INFO, logger="simdex.clients.remote")
    with Client([a.target, b.target], timeout=60) as c:
        worker = threading.Thread(target=lambda: out.append(c._transport.upsert(COL, paused)))
        worker.start()
        try:
            assert paused.started.wait(30), "the stream did not start"
            b = restart(procs, b, tmp_path, "b-again")
            deadline = time.monotonic() + 60
            while served(b_metrics, "Count") == 0:  # until the channel uses b again (it reconnects with backoff)
                assert time.monotonic() < deadline, "the client never reconnected to the restarted server"
                assert c.count(COL) == N
            a.kill()  # the stream on a is cut before its end: a stored nothing
            worker.join(60)
        finally:
            paused.resume.set()
            worker.join(60)
    assert out == [300], out
    assert "repeating a call that failed where a repeat is safe" in caplog.text
    with Client(b.target) as cb:
        assert cb.count(COL) == N + 300
        assert [it.id for it in cb.get(COL, ids, with_vectors=False)] == ids
    assert stored(a.data, ids) == 0  # the killed server's database: nothing of the cut stream


def test_upsert_cut_after_its_whole_stream_was_sent_is_not_sent_again(procs, tmp_path):
    """kill -9 of the server between its commit and its answer (an HNSW index add of many vectors keeps it busy
    there): the client cannot tell the stream was stored, so it raises instead of sending it to the other server.
    The killed server's database holds every item: it had stored the write that a blind repeat would send again."""
    servers = [procs.start(tmp_path / f"s{i}") for i in range(2)]
    for s in servers:
        load(s.target, "HNSW32")
    n = 60_000
    ids, parts = chunks(n, seed=9, parts=8)
    raised: list = []
    with Client([s.target for s in servers], timeout=120) as c:
        def send():
            try:
                c._transport.upsert(COL, parts)
            except Unavailable as exc:
                raised.append(exc)

        worker = threading.Thread(target=send)
        worker.start()
        try:
            hit = committed_on(servers, ids, timeout=120)
            servers[hit].kill()
        finally:
            worker.join(120)
    assert len(raised) == 1 and "not retried" in raised[0].message, raised
    with Client(servers[1 - hit].target) as other:
        assert other.count(COL) == N, "the other server received the batch"
    assert stored(servers[hit].data, ids) == n  # the killed one had committed it


def stored(data, ids: list[str]) -> int:
    """How many of `ids` the SQLite database in data directory `data` holds (committed rows: the truth)."""
    db = sqlite3.connect(f"file:{data / 'simdex.db'}?mode=ro", uri=True, timeout=10)
    try:
        db.execute("CREATE TEMP TABLE wanted (id TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO wanted VALUES (?)", [(i,) for i in ids])
        return db.execute("SELECT count(*) FROM items JOIN wanted ON items.external_id = wanted.id").fetchone()[0]
    finally:
        db.close()


def committed_on(servers: list[ServerProc], ids: list[str], timeout: float) -> int:
    """The index of the server whose database holds all of `ids`, polled until one does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, s in enumerate(servers):
            if stored(s.data, ids[-1:]) and stored(s.data, ids) == len(ids):  # one transaction: all or none
                return i
        time.sleep(0.01)
    raise AssertionError(f"no server committed the {len(ids)} items within {timeout}s")
