"""Radius search with paging, and the storage layer's all-or-nothing writes and restart recovery (both DBs)."""
import numpy as np
import pytest

from conftest import crash, oracle
from simdex.errors import NotFound


@pytest.mark.parametrize("metric,radius", [("l2", 6.0), ("cosine", 0.5)])
def test_radius_search_returns_everything_within_radius_over_pages(client, metric, radius):
    rng = np.random.default_rng(8)
    xb = rng.standard_normal((2000, 6)).astype(np.float32)
    xq = rng.standard_normal((4, 6)).astype(np.float32)
    names = [f"r{i}" for i in range(2000)]
    client.create_collection("rad", dim=6, metric=metric)
    client.upsert("rad", names, xb)
    r = client.search("rad", xq, radius=radius, page_size=50)
    S, I = oracle(xb, xq, len(xb), metric)
    for qi in range(len(xq)):
        inside = S[qi] < radius if metric == "l2" else S[qi] > radius
        want = [names[j] for j in I[qi][inside]]
        assert len(want) > 50, "the test must span several pages"
        assert set(r.ids[qi]) == set(want)
        d = r.distances[qi]
        assert (np.diff(d) >= -1e-5).all() if metric == "l2" else (np.diff(d) <= 1e-5).all()


def test_radius_search_honours_filter(client):
    rng = np.random.default_rng(9)
    xb = rng.standard_normal((500, 4)).astype(np.float32)
    client.create_collection("rf", dim=4)
    client.upsert("rf", [f"q{i}" for i in range(500)], xb, [{"even": i % 2 == 0} for i in range(500)])
    r = client.search("rf", xb[:3], radius=4.0, filter={"even": True}, include_metadata=True)
    for ids, metas in zip(r.ids, r.metadata):
        assert ids and all(m["even"] is True for m in metas)
        assert all(int(i[1:]) % 2 == 0 for i in ids)


def test_failed_transaction_writes_nothing(service, monkeypatch):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    service.create_collection("atomic", 4)
    service.upsert("atomic", [f"a{i}" for i in range(10)], x)
    from simdex.store import items as store_mod

    real = store_mod.Store._delete_iids

    def delete_then_fail(self, conn, cid, iids, seq):
        real(self, conn, cid, iids, seq)
        raise RuntimeError("disk on fire")  # after the old rows are gone, before the new ones are in

    monkeypatch.setattr(store_mod.Store, "_delete_iids", delete_then_fail)
    with pytest.raises(RuntimeError):
        service.upsert("atomic", ["a0", "a1", "new"], x[:3] + 100)
    monkeypatch.undo()
    assert service.count("atomic") == 10
    items = service.get("atomic", ["a0", "a1"])
    np.testing.assert_array_equal(np.stack([it.vector for it in items]), x[:2])
    with pytest.raises(NotFound):
        service.get("atomic", ["new"])
    hits, _ = service.search("atomic", x[:2], 1)
    assert [h.ids for h in hits] == [["a0"], ["a1"]]


def test_delete_with_unknown_id_deletes_nothing(service):
    service.create_collection("d", 2)
    service.upsert("d", ["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(NotFound, match="'zzz'"):
        service.delete("d", ["a", "zzz"])
    assert service.count("d") == 2
    assert service.delete("d", ["a", "zzz"], ignore_missing=True) == (1, 2)


def test_restart_restores_snapshot_and_catches_up(tmp_path, db_url):
    from simdex.service.facade import Simdex

    rng = np.random.default_rng(10)
    xb = rng.standard_normal((3000, 8)).astype(np.float32)
    names = [f"s{i}" for i in range(3000)]
    s = Simdex(tmp_path / "d", db_url, snapshot_interval=0)
    s.create_collection("snap", 8, "l2", "HNSW32")
    s.upsert("snap", names[:2000], xb[:2000])
    assert s.snapshot() == 1
    s.upsert("snap", names[2000:], xb[2000:])            # after the snapshot
    s.delete("snap", names[:100])                         # after the snapshot
    s.upsert("snap", names[100:200], xb[100:200] + 50)    # replaced after the snapshot
    crash(s)  # no close(): as if the process died here, without a final snapshot
    s2 = Simdex(tmp_path / "d", db_url, snapshot_interval=0)
    try:
        assert s2.count("snap") == 2900
        hits, _ = s2.search("snap", xb[:200], 3)
        returned = {i for h in hits for i in h.ids}
        assert not returned & set(names[:100])
        assert not returned & set(names[100:200])  # old positions of replaced items are gone
        hits, _ = s2.search("snap", xb[2000:2050], 1)
        assert [h.ids[0] for h in hits] == names[2000:2050]
        hits, _ = s2.search("snap", xb[100:110] + 50, 1)
        assert [h.ids[0] for h in hits] == names[100:110]
    finally:
        s2.close()


def test_compaction_rebuilds_after_many_deletes(sqlite_service):
    s = sqlite_service
    rng = np.random.default_rng(11)
    xb = rng.standard_normal((6000, 8)).astype(np.float32)
    names = [f"c{i}" for i in range(6000)]
    s.create_collection("cmp", 8, "l2", "HNSW32")
    s.upsert("cmp", names, xb)
    s.delete("cmp", names[:2000])
    col = s.collections.get("cmp")
    assert col.ann.n_dead == 0 and col.ann.ntotal == 4000  # compacted: tombstones dropped
    hits, _ = s.search("cmp", xb[2000:2100], 1)
    assert [h.ids[0] for h in hits] == names[2000:2100]


def test_stale_snapshot_of_another_collection_is_ignored(tmp_path):
    import shutil

    from simdex.service.facade import Simdex

    s = Simdex(tmp_path / "d", snapshot_interval=0)
    s.create_collection("old", 4, "l2", "Flat")
    s.upsert("old", ["a", "b"], np.eye(4, dtype=np.float32)[:2])
    s.snapshot()
    stale = tmp_path / "stale.npz"
    shutil.copy(s.collections.get("old").path, stale)
    s.delete_collection("old")
    s.create_collection("new", 4, "ip", "HNSW16")
    s.upsert("new", ["x", "y", "z"], np.eye(4, dtype=np.float32)[1:])
    new = s.collections.get("new")
    crash(s)
    shutil.copy(stale, new.path)  # a crash left the old collection's snapshot where the new one's goes
    s2 = Simdex(tmp_path / "d", snapshot_interval=0)
    try:
        assert s2.count("new") == 3
        hits, _ = s2.search("new", np.eye(4, dtype=np.float32)[1:], 1)
        assert [h.ids for h in hits] == [["x"], ["y"], ["z"]]
    finally:
        s2.close()


@pytest.mark.parametrize("source", ["database", "index"])
def test_exact_path_skips_items_deleted_behind_the_index(sqlite_service, monkeypatch, source):
    """A row deleted between the filter's SQL and the vector read (a delete racing a search). Read from the
    database (kinds whose index keeps no exact copy), it is left out of exact answers, never read as an
    uninitialised vector; read from the index's own exact copy, the answer is the index's state, which still
    holds the row until the delete reaches it (the delete is not yet acknowledged)."""
    from simdex.index.ann import AnnIndex

    s = sqlite_service
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    s.create_collection("race", 4)
    s.upsert("race", [f"r{i}" for i in range(10)], x, [{"g": 1}] * 10)
    col = s.collections.get("race")
    matched = np.arange(10, dtype=np.int64)  # internal ids of r0..r9
    monkeypatch.setattr(s.store, "filter_iids", lambda cid, spec: matched)  # matched before the delete
    if source == "database":
        monkeypatch.setattr(AnnIndex, "stored_vectors", lambda self, positions: None)
    s.store.delete(col.info.id, ["r0"], ignore_missing=False)  # the database only, as mid-race
    hits, _ = s.search("race", x[:1], 3, filter={"g": 1})
    if source == "database":
        assert hits[0].ids == ["r1", "r2", "r3"]
        np.testing.assert_allclose(hits[0].distances, [64.0, 256.0, 576.0])
    else:
        assert hits[0].ids == ["r0", "r1", "r2"]
        np.testing.assert_allclose(hits[0].distances, [0.0, 64.0, 256.0])
