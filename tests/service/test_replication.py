"""Two services on one PostgreSQL schema, in this process: each follows the other's commits (service/replication.py).

Searches are compared with an exact oracle over the rows the database holds; the real-process tests (three
`simdex serve` on one database) are tests/e2e/test_replicas.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import oracle
from simdex.service import replication
from simdex.service.facade import Simdex
from simdex.service.replication import Lag

DIM = 8
WAIT_S = 10.0  # generous: lag targets live in bench/replicas.py, these tests check that it converges


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def eventually(check, timeout: float = WAIT_S, what: str = "the replica to catch up"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - e.g. NotFound before the collection arrives; retried until the deadline
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.01)


def caught_up(s: Simdex, name: str, truth: Simdex) -> bool:
    return s.collections.get(name).seq == truth.store.get_collection(name).seq


def matches_oracle(s: Simdex, name: str, live: dict[str, np.ndarray], xq: np.ndarray, k: int = 5) -> None:
    names = sorted(live)
    _, I = oracle(np.stack([live[n] for n in names]), xq, k)
    hits, _ = s.search(name, xq, k)
    assert [h.ids for h in hits] == [[names[i] for i in row] for row in I]


@pytest.fixture
def pair(tmp_path, pg_url):
    """(a, b): two services on one fresh schema, each with its own data directory."""
    a = Simdex(tmp_path / "a", pg_url, snapshot_interval=0)
    b = Simdex(tmp_path / "b", pg_url, snapshot_interval=0)
    yield a, b
    a.close()
    b.close()


def test_writes_on_one_are_searched_on_the_other_like_the_oracle(pair):
    a, b = pair
    a.create_collection("c", DIM)
    eventually(lambda: b.get_collection("c"))
    x = vectors(300, 0)
    names = [f"v{i}" for i in range(300)]
    a.upsert("c", names, x)
    live = dict(zip(names, x))
    eventually(lambda: caught_up(b, "c", a))
    matches_oracle(b, "c", live, x[:20])

    new = vectors(40, 1) + 3
    a.upsert("c", names[:40], new)          # replaced: the old vectors must be gone on b
    a.delete("c", names[40:80])
    b.upsert("c", ["b0", "b1"], vectors(2, 2))
    live.update(zip(names[:40], new))
    live.update(zip(["b0", "b1"], vectors(2, 2)))
    for n in names[40:80]:
        del live[n]
    for s in (a, b):
        eventually(lambda s=s: caught_up(s, "c", a) and s.count("c") == len(live))
        matches_oracle(s, "c", live, np.concatenate([x[:80], new[:10]]))
        assert s.get_collection("c").count == len(live)


def test_collections_created_and_deleted_on_one_appear_and_go_on_the_other(pair):
    a, b = pair
    a.create_collection("one", DIM)
    a.create_collection("two", 4, "ip")
    eventually(lambda: [c.name for c in b.list_collections()] == ["one", "two"])
    assert (b.get_collection("two").dim, b.get_collection("two").metric) == (4, "ip")
    b.delete_collection("one")
    eventually(lambda: [c.name for c in a.list_collections()] == ["two"])
    a.delete_collection("two")
    a.create_collection("two", DIM)  # the same name again: a new collection, with a new id
    a.upsert("two", ["x"], vectors(1, 3))
    eventually(lambda: b.collections.get("two").info.id == a.collections.get("two").info.id
               and b.count("two") == 1 and b.get_collection("two").dim == DIM)


def test_a_missed_notice_is_caught_up_by_the_periodic_catch_up(tmp_path, pg_url, monkeypatch):
    a = Simdex(tmp_path / "a", pg_url, snapshot_interval=0)
    b = Simdex(tmp_path / "b", pg_url, snapshot_interval=0, catch_up_interval=0.3)
    try:
        a.create_collection("c", DIM)
        eventually(lambda: b.get_collection("c"))
        monkeypatch.setattr("simdex.store.items.announce", lambda *args: None)  # every notice from now on is lost
        a.upsert("c", ["x"], vectors(1, 0))
        eventually(lambda: b.count("c") == 1 and b.search("c", vectors(1, 0), 1)[0][0].ids == ["x"],
                   timeout=3.0, what="the periodic catch-up")
    finally:
        a.close()
        b.close()


def test_the_listener_reconnects_after_its_connection_is_killed_and_catches_up(tmp_path, pg_url, monkeypatch):
    monkeypatch.setattr(replication, "BACKOFF_S", (1.0, 1.0))  # a window in which nobody listens
    a = Simdex(tmp_path / "a", pg_url, snapshot_interval=0)
    b = Simdex(tmp_path / "b", pg_url, snapshot_interval=0, catch_up_interval=600)  # no periodic safety net
    admin = sa.create_engine(pg_url)
    try:
        a.create_collection("c", DIM)
        eventually(lambda: b.replication.connected.is_set() and b.get_collection("c"))
        pid = b.replication.listener_pid
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        eventually(lambda: not b.replication.connected.is_set(), what="the listener to see its connection die")
        a.upsert("c", ["while-deaf"], vectors(1, 1))  # its notice reaches nobody on b
        eventually(lambda: b.replication.connected.is_set(), what="the listener to reconnect")
        assert b.replication.listener_pid not in (None, pid)
        assert b.count("c") == 1 and b.collections.get("c").seq == 1  # caught up when it reconnected
        a.upsert("c", ["after"], vectors(1, 2))  # and notices are heard again
        eventually(lambda: b.collections.get("c").seq == 2)
    finally:
        admin.dispose()
        a.close()
        b.close()


def test_a_write_first_applies_what_other_servers_committed_before_it(pair):
    a, b = pair
    a.create_collection("c", DIM)
    eventually(lambda: b.get_collection("c"))
    b.replication.close()  # b hears nothing more: only its own write can bring it forward
    x = vectors(20, 0)
    a.upsert("c", [f"a{i}" for i in range(20)], x)                     # seq 1
    a.delete("c", ["a0", "a1"])                                         # seq 2
    b.upsert("c", ["b"], vectors(1, 9))                                 # seq 3, on b
    col = b.collections.get("c")
    assert col.seq == 3 and col.ann.n_live == 19
    live = {f"a{i}": x[i] for i in range(2, 20)} | {"b": vectors(1, 9)[0]}
    matches_oracle(b, "c", live, x)


def test_catch_up_goes_in_steps_of_whole_writes(pair, monkeypatch):
    a, b = pair
    a.create_collection("c", DIM)
    eventually(lambda: b.get_collection("c"))
    b.replication.close()
    for w in range(5):
        a.upsert("c", [f"w{w}-{i}" for i in range(10)], vectors(10, w))
    monkeypatch.setattr("simdex.service.collection.CATCH_UP_FLOATS", 10 * DIM)  # one write per step
    col, seen = b.collections.get("c"), []
    changes = b.store.changes
    monkeypatch.setattr(b.store, "changes", lambda *args: seen.append(args[2]) or changes(*args))
    assert col.catch_up()
    assert seen == [0, 1, 2, 3, 4, 5] and col.seq == 5 and col.ann.n_live == 50


def test_the_lag_is_reported_while_a_catch_up_waits(pair):
    a, b = pair
    a.create_collection("c", DIM)
    eventually(lambda: b.get_collection("c"))
    col = b.collections.get("c")
    assert b.replication.lag(col) == Lag(0, 0.0)
    with col.write_lock:  # b's catch-up waits here, knowing it is behind
        a.upsert("c", ["x"], vectors(1, 0))
        eventually(lambda: b.replication.lag(col).seq_behind == 1)
        time.sleep(0.05)
        assert b.replication.lag(col).seconds >= 0.05
    eventually(lambda: b.replication.lag(col) == Lag(0, 0.0))


def test_searches_go_on_while_a_replica_catches_up(pair):
    a, b = pair
    a.create_collection("c", DIM)
    a.upsert("c", ["q"], vectors(1, 0))
    eventually(lambda: caught_up(b, "c", a))
    stop, answers, errors = threading.Event(), [], []

    def search():
        while not stop.is_set():
            try:
                answers.append(b.search("c", vectors(1, 0), 1)[0][0].ids)
            except Exception as exc:  # noqa: BLE001 - collected: the test shows them
                errors.append(exc)

    t = threading.Thread(target=search)
    t.start()
    try:
        for w in range(10):
            a.upsert("c", [f"w{w}-{i}" for i in range(500)], vectors(500, 100 + w) + 5)
        eventually(lambda: caught_up(b, "c", a))
    finally:
        stop.set()
        t.join()
    assert errors == [] and answers and all(ids == ["q"] for ids in answers)
    assert b.count("c") == 5001


def test_a_rebuild_leaves_rows_written_after_its_listing_to_the_catch_up(pair, monkeypatch):
    a, b = pair
    a.create_collection("c", DIM)
    a.upsert("c", ["x", "y"], vectors(2, 0))
    eventually(lambda: caught_up(b, "c", a))
    b.replication.close()
    col = b.collections.get("c")
    listed = b.store.live(col.info.id)
    a.upsert("c", ["z"], vectors(1, 1))  # another server writes between b's listing and its read of the vectors
    monkeypatch.setattr(b.store, "live", lambda cid: listed)
    with col.write_lock:
        col._rebuild()  # as a training or a compaction does
    assert col.ann.n_live == 2
    monkeypatch.undo()
    assert col.catch_up() and col.ann.n_live == 3
    matches_oracle(b, "c", {"x": vectors(2, 0)[0], "y": vectors(2, 0)[1], "z": vectors(1, 1)[0]}, vectors(3, 5), k=3)


def test_a_replica_behind_the_pruned_removals_catches_up_against_the_live_rows(tmp_path, pg_url):
    """b stops following while a replaces and deletes rows and prunes the whole removed-items log; b's next
    catch-up cannot read those removals, compares its index with the live rows, and searches like the oracle (no
    deleted or replaced id)."""
    a = Simdex(tmp_path / "a", pg_url, snapshot_interval=0)
    b = Simdex(tmp_path / "b", pg_url, snapshot_interval=0, catch_up_interval=600)
    try:
        a.create_collection("c", DIM)
        x = vectors(200, 0)
        names = [f"v{i}" for i in range(200)]
        a.upsert("c", names, x)
        eventually(lambda: caught_up(b, "c", a))
        b.replication.close()  # joined: b's index moves only when this test calls catch_up
        new = vectors(50, 1) + 3
        a.upsert("c", names[:50], new)
        a.delete("c", names[50:90])
        live = dict(zip(names, x))
        live.update(zip(names[:50], new))
        for n in names[50:90]:
            del live[n]
        a_col = a.collections.get("c")
        assert a_col.prune_removals(keep=0) == 90
        assert b.collections.get("c").seq == 1  # behind the horizon (3)
        assert b.collections.get("c").catch_up()
        assert caught_up(b, "c", a) and b.collections.get("c").ann.n_live == len(live)
        matches_oracle(b, "c", live, np.concatenate([x[:100], new[:10]]))
        b.upsert("c", ["b0"], vectors(1, 5))  # and it writes on from there
        live["b0"] = vectors(1, 5)[0]
        a_col.catch_up()
        matches_oracle(a, "c", live, x[:20])
    finally:
        a.close()
        b.close()
