"""The change feed replicas catch up from (Store.changes, the removed-items log) and the commit notices
(store.notify) they hear: both databases for the feed, PostgreSQL for LISTEN/NOTIFY."""
from __future__ import annotations

import time

import numpy as np
import pytest
import sqlalchemy as sa

from simdex.store.notify import Commit, Listener, announce

DIM = 4


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def iids_of(service, name: str, ids: list[str]) -> list[int]:
    cid = service.collections.get(name).info.id
    with service.engine.connect() as conn:
        found = dict(conn.execute(sa.text("SELECT external_id, iid FROM items WHERE collection_id = :c"),
                                  {"c": cid}).all())
    return [found[i] for i in ids]


def test_changes_after_a_seq_hold_the_rows_added_and_the_ids_removed_since(service):
    s = service
    s.create_collection("c", DIM)
    cid = s.collections.get("c").info.id
    s.upsert("c", ["a", "b", "c"], rows(3, 0))                      # seq 1
    old_b, old_c = iids_of(s, "c", ["b", "c"])
    s.upsert("c", ["b"], rows(1, 1))                                # seq 2: b replaced
    s.delete("c", ["c"])                                            # seq 3
    new_b, = iids_of(s, "c", ["b"])

    every = s.store.changes(cid, DIM, 0, 1000)
    assert (every.after, every.seq) == (0, 3)
    assert dict(zip(every.ext_ids, every.added.tolist())) == {"a": iids_of(s, "c", ["a"])[0], "b": new_b}
    assert sorted(every.removed.tolist()) == sorted([old_b, old_c])
    np.testing.assert_array_equal(every.vectors[every.ext_ids.index("b")], rows(1, 1)[0])

    since_1 = s.store.changes(cid, DIM, 1, 1000)
    assert (since_1.seq, since_1.ext_ids, sorted(since_1.removed.tolist())) == (3, ["b"], sorted([old_b, old_c]))
    since_2 = s.store.changes(cid, DIM, 2, 1000)
    assert (since_2.seq, since_2.ext_ids, since_2.removed.tolist()) == (3, [], [old_c])
    none = s.store.changes(cid, DIM, 3, 1000)
    assert (none.seq, len(none.added), len(none.removed), none.vectors.shape) == (3, 0, 0, (0, DIM))


def test_a_step_holds_whole_writes_up_to_its_row_budget_and_at_least_one(service):
    s = service
    s.create_collection("c", DIM)
    cid = s.collections.get("c").info.id
    for w in range(3):
        s.upsert("c", [f"w{w}-{i}" for i in range(3)], rows(3, w))  # seqs 1, 2, 3: three rows each
    s.delete("c", ["w0-0"])                                         # seq 4: a removal only
    s.upsert("c", [f"big{i}" for i in range(10)], rows(10, 9))      # seq 5: ten rows

    steps, after = [], 0
    while (ch := s.store.changes(cid, DIM, after, 5)).seq > after:
        steps.append((ch.seq, len(ch.added), len(ch.removed)))
        after = ch.seq
    # live rows count (w0-0 is gone): 2 + 3 fit in 5, a third write would not; the removal-only write rides along
    # with the rows before it; the write of ten comes whole, alone
    assert steps == [(2, 5, 0), (4, 3, 1), (5, 10, 0)]


def test_deleting_a_collection_drops_its_removal_log(service):
    s = service
    s.create_collection("c", DIM)
    s.upsert("c", ["a"], rows(1, 0))
    s.delete("c", ["a"])
    cid = s.collections.get("c").info.id
    s.delete_collection("c")
    with s.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM removed_items WHERE collection_id = :c"),
                            {"c": cid}).scalar() == 0
    assert s.store.changes(cid, DIM, 0, 10) is None


def log_rows(s, cid: int) -> list[tuple[int, int]]:
    with s.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(
            sa.text("SELECT iid, seq FROM removed_items WHERE collection_id = :c"), {"c": cid}).all())


def test_a_pruned_log_keeps_the_removals_after_its_horizon_and_says_when_a_reader_is_behind_it(service, monkeypatch):
    from simdex.store import items as items_mod

    s = service
    s.create_collection("c", DIM)
    cid = s.collections.get("c").info.id
    s.upsert("c", ["a", "b", "c", "d"], rows(4, 0))                 # seq 1
    old_a, old_b, old_c = iids_of(s, "c", ["a", "b", "c"])
    s.upsert("c", ["a"], rows(1, 1))                                # seq 2: a replaced
    s.delete("c", ["b"])                                            # seq 3
    s.delete("c", ["c"])                                            # seq 4
    assert log_rows(s, cid) == [(old_a, 2), (old_b, 3), (old_c, 4)]

    assert s.store.prune_removals(cid, 3) == 2                      # the removals of writes 2 and 3 go
    assert log_rows(s, cid) == [(-1, 3), (old_c, 4)]                # the horizon row, and what is after it
    live = sorted(iids_of(s, "c", ["a", "d"]))
    for after in (0, 1, 2):                                         # behind the horizon: the live ids come along
        ch = s.store.changes(cid, DIM, after, 1000)
        assert ch.seq == 4 and sorted(ch.live.tolist()) == live
        assert -1 not in ch.removed.tolist() and old_c in ch.removed.tolist()
    for after in (3, 4):                                            # at or past it: the log is whole
        ch = s.store.changes(cid, DIM, after, 1000)
        assert ch.live is None and ch.removed.tolist() == ([old_c] if after == 3 else [])

    assert s.store.prune_removals(cid, 2) == 0                      # a lower horizon changes nothing
    assert log_rows(s, cid) == [(-1, 3), (old_c, 4)]
    assert s.store.prune_removals(cid, 4) == 1
    assert log_rows(s, cid) == [(-1, 4)]
    assert s.store.changes(cid, DIM, 3, 1000).live is not None
    assert s.store.changes(cid, DIM, 4, 1000).live is None
    s.delete("c", ["a", "d"])                                       # seq 5: two rows
    monkeypatch.setattr(items_mod, "CHUNK", 1)
    assert s.store.prune_removals(cid, 5, max_chunks=1) == 1        # a bounded pass: the horizon first, one row
    assert len(log_rows(s, cid)) == 2 and log_rows(s, cid)[0] == (-1, 5)
    assert s.store.changes(cid, DIM, 4, 1000).live is not None      # what is left below it is not trusted
    assert s.store.prune_removals(cid, 5, max_chunks=1) == 1        # the next pass goes on
    assert log_rows(s, cid) == [(-1, 5)]


def test_the_snapshot_pass_prunes_all_but_the_newest_writes_removals_and_a_catch_up_behind_it_is_exact(
        service, monkeypatch):
    """An index behind the horizon (as a replica that missed the writes) catches up against the live rows: no
    deleted or replaced id stays in it, and its searches are those of an exact oracle."""
    from conftest import oracle
    from simdex.service import collection as collection_mod

    s = service
    s.create_collection("c", DIM)
    col = s.collections.get("c")
    cid = col.info.id
    x = rows(50, 0)
    names = [f"v{i}" for i in range(50)]
    s.upsert("c", names, x)                                          # seq 1
    behind = col.ann.fresh()                                         # an index at seq 1, as a lagging replica's
    behind.add(np.array(iids_of(s, "c", names), dtype=np.int64), names, x)
    live = dict(zip(names, x))
    for w in range(6):                                               # seqs 2..7: replacements and deletes
        if w % 2:
            s.delete("c", names[w * 5:w * 5 + 5])
            for n in names[w * 5:w * 5 + 5]:
                del live[n]
        else:
            new = rows(5, 10 + w) + 2
            s.upsert("c", names[w * 5:w * 5 + 5], new)
            live.update(zip(names[w * 5:w * 5 + 5], new))
    assert max(seq for _, seq in log_rows(s, cid)) == 7
    monkeypatch.setattr(collection_mod, "REMOVALS_KEPT_WRITES", 2)
    s.snapshots.snapshot()
    rows_left = log_rows(s, cid)
    assert rows_left[0] == (-1, 5) and all(seq > 5 for iid, seq in rows_left[1:]) and len(rows_left) == 1 + 5 + 5
    asked, prune = [], s.store.prune_removals
    monkeypatch.setattr(s.store, "prune_removals", lambda *a: asked.append(a) or prune(*a))
    s.snapshots.snapshot()  # finds nothing left below 5 ...
    s.snapshots.snapshot()  # ... so, with no write since, this pass does not ask the database again
    assert asked == [(cid, 5)] and log_rows(s, cid) == rows_left

    col.ann, col.seq = behind, 1                                     # rewind this server's index to seq 1
    monkeypatch.setattr(collection_mod, "CATCH_UP_FLOATS", 5 * DIM)  # a step per write of rows (and the delete after)
    steps, changes = [], s.store.changes
    monkeypatch.setattr(s.store, "changes", lambda *a: steps.append(changes(*a)) or steps[-1])
    assert col.catch_up()
    assert col.seq == 7 and col.ann.n_live == len(live) == s.count("c")
    assert [ch.seq for ch in steps if ch.seq > ch.after] == [3, 5, 7]   # three steps, two behind the horizon (5)
    assert [ch.live is not None for ch in steps] == [True, False, False, False]  # live ids read once, not per step
    xq = rows(12, 99)
    ids = sorted(live)
    _, idx = oracle(np.stack([live[n] for n in ids]), xq, 5)
    hits, _ = s.search("c", xq, 5)
    assert [h.ids for h in hits] == [[ids[i] for i in row] for row in idx]


def test_commits_parse_and_anything_else_on_the_channel_is_ignored():
    assert Commit.parse("write 3 17") == Commit("write", 3, 17)
    assert Commit.parse("create 5 0") == Commit("create", 5, 0)
    for junk in ("", "write 3", "write x 1", "drop 1 2", "write 1 2 3", "write -1 2"):
        assert Commit.parse(junk) is None


def heard(listener: Listener, n: int, timeout: float = 10.0) -> list[Commit]:
    got: list[Commit] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += listener.wait(0.2)
    return got


def test_every_write_and_collection_change_is_announced_on_commit(tmp_path, pg_url):
    from simdex.service.facade import Simdex

    s = Simdex(tmp_path / "d", pg_url, snapshot_interval=0)
    listener = Listener(s.engine)
    try:
        s.create_collection("c", DIM)
        cid = s.collections.get("c").info.id
        s.upsert("c", ["a", "b"], rows(2, 0))
        s.delete("c", ["a"])
        s.delete("c", ["zz"], ignore_missing=True)  # removes nothing: no new seq, no notice
        s.delete_collection("c")
        got = heard(listener, 4)
        assert got == [Commit("create", cid, 0), Commit("write", cid, 1), Commit("write", cid, 2),
                       Commit("delete", cid, 2)]
        assert listener.wait(0.3) == []
    finally:
        listener.close()
        s.close()


def test_a_notice_is_delivered_only_when_its_transaction_commits(tmp_path, pg_url):
    from simdex.store.engine import make_engine

    engine = make_engine(pg_url)
    listener = Listener(engine)
    try:
        with engine.connect() as conn:
            announce(conn, "write", 7, 1)
            assert listener.wait(0.3) == []  # queued, not sent, while the transaction is open
            conn.rollback()
        assert listener.wait(0.3) == []
        with engine.begin() as conn:
            announce(conn, "write", 7, 2)
        assert heard(listener, 1) == [Commit("write", 7, 2)]
    finally:
        listener.close()
        engine.dispose()


def test_stores_in_other_schemas_of_the_database_are_not_heard(pg_url):
    from conftest import pg_schema
    from simdex.store.engine import make_engine

    with pg_schema() as other_url:
        mine, other = make_engine(pg_url), make_engine(other_url)
        listener = Listener(mine)
        try:
            assert listener.channel.startswith("simdex:simdex_test_")
            with other.begin() as conn:
                announce(conn, "write", 1, 1)
            assert listener.wait(0.5) == []
            with mine.begin() as conn:
                announce(conn, "write", 1, 1)
            assert heard(listener, 1) == [Commit("write", 1, 1)]
        finally:
            listener.close()
            mine.dispose()
            other.dispose()


def test_listening_needs_postgresql(tmp_path):
    from simdex.store.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match=r"PostgreSQL through psycopg 3 \(postgresql\+psycopg://\)"):
        Listener(engine)
    engine.dispose()
