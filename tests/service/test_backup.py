"""Backup and restore (service/backup.py over store/backup.py), on SQLite and PostgreSQL: a backup taken while a
thread writes equals, item by item, the source at the backup's sequence numbers once restored (items, vectors,
metadata, hashes, heads, and searches against an exact oracle); corrupt and partial backups and stores that are not
empty are refused with a message naming what is wrong, and a restore that fails leaves nothing."""
from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from conftest import PG_URL, InProcessServer, _pg_schema_url, oracle, recall_at
from simdex.clients import Client
from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simdex.service import backup
from simdex.service.facade import Simdex
from simdex.store import backup as store_backup
from simdex.types import HeadSpec

pytestmark = pytest.mark.timeout(300)
DIM, N = 8, 300
KINDS = {"a": ("l2", "Flat"), "b": ("cosine", "HNSW32")}
WAIT_S = 60


@pytest.fixture
def target_url(db_url):
    """A second, empty database of db_url's kind: where a backup is restored (None: SQLite in the data dir)."""
    if db_url is None:
        yield None
        return
    import sqlalchemy as sa

    url, engine, schema = _pg_schema_url(PG_URL)
    yield url
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def fill(service: Simdex) -> dict[str, dict]:
    """Collections a (Flat, l2) and b (HNSW32, cosine) of N seeded items, a head on b; -> {name: {id: item}}."""
    rng = np.random.default_rng(0)
    state = {}
    for name, (metric, index) in KINDS.items():
        service.create_collection(name, DIM, metric, index)
        ids = [f"i{j}" for j in range(N)]
        x = rng.standard_normal((N, DIM)).astype(np.float32)
        metas = [{"lab": "even" if j % 2 == 0 else "odd", "j": j} for j in range(N)]
        hashes = [f"init-{j}" for j in range(N)]
        service.upsert(name, ids, x, metas, hashes)
        state[name] = {i: (v, m, h) for i, v, m, h in zip(ids, x, metas, hashes)}
    service.train_head(HeadSpec(collection="b", head="hb", label_field="lab"))
    return state


class Writer(threading.Thread):
    """Upserts (new ids and replaced ones) and deletes on a and b until stopped; `log[name]` holds every committed
    write as (seq, {id: item or None for deleted}), `count` how many have committed."""

    def __init__(self, service: Simdex, state: dict[str, dict]):
        super().__init__(name="backup-writer", daemon=True)
        self.service = service
        self.live = {name: set(items) for name, items in state.items()}
        self.log: dict[str, list] = {name: [] for name in state}
        self.count, self.cond = 0, threading.Condition()
        self.stop, self.error = threading.Event(), None

    def run(self) -> None:
        rng = np.random.default_rng(1)
        try:
            while not self.stop.is_set():
                self._write_one(rng)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def _write_one(self, rng) -> None:
        n = self.count
        name = "ab"[n % 2]
        if n % 5 == 4:
            ids = [str(i) for i in rng.choice(sorted(self.live[name]), 3, replace=False)]
            _, seq = self.service.delete(name, ids)
            change = dict.fromkeys(ids)
            self.live[name] -= set(ids)
        else:
            ids = [f"i{j}" if rng.random() < 0.5 else f"w{j}" for j in rng.choice(N, 5, replace=False)]
            x = rng.standard_normal((5, DIM)).astype(np.float32)
            metas = [{"lab": "even" if k % 2 == 0 else "odd", "write": n} for k in range(5)]
            hashes = [f"w{n}-{k}" for k in range(5)]
            _, seq = self.service.upsert(name, ids, x, metas, hashes)
            change = {i: (v, m, h) for i, v, m, h in zip(ids, x, metas, hashes)}
            self.live[name] |= set(ids)
        with self.cond:
            self.log[name].append((seq, change))
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, more: int) -> None:
        """Until `more` further writes have committed."""
        with self.cond:
            goal = self.count + more
            assert self.cond.wait_for(lambda: self.count >= goal or self.error, WAIT_S), "the writer stalled"
        assert self.error is None, self.error


def state_at(initial: dict, log: list, seq: int) -> dict:
    """The items of a collection at sequence number `seq`: the initial ones with every logged write up to it."""
    items = dict(initial)
    for s, change in log:
        if s <= seq:
            for i, item in change.items():
                if item is None:
                    items.pop(i)
                else:
                    items[i] = item
    return items


def assert_holds(service: Simdex, name: str, expected: dict) -> None:
    """`service`'s collection `name` holds exactly `expected` ({id: (vector, metadata, hash)}), item by item."""
    _, _, ids = service.collections.get(name).listing()
    assert sorted(ids) == sorted(expected)
    for item in service.get(name, sorted(expected)):
        vector, meta, content_hash = expected[item.id]
        np.testing.assert_array_equal(item.vector, vector)
        assert (item.metadata, item.content_hash) == (meta, content_hash), item.id


def test_backup_taken_while_writing_restores_the_source_at_its_sequence_numbers(tmp_path, db_url, target_url,
                                                                                 monkeypatch, caplog):
    src = Simdex(tmp_path / "src", db_url, snapshot_interval=0)
    initial = fill(src)
    src.snapshot()
    heads = src.list_heads()
    writer = Writer(src, initial)
    paused = []

    def copy_then_let_writes_land(*args):
        copy_snapshots(*args)
        writer.wait_for(10)  # writes commit while the backup is under way, after the snapshots were copied
        paused.append("after the snapshots")

    def table_then_let_writes_land(src_conn, dst_conn, table):
        copy_table(src_conn, dst_conn, table)
        if table.name == "collections":  # PostgreSQL: writes commit between two tables of one export
            writer.wait_for(10)
            paused.append("between tables")

    copy_snapshots, copy_table = backup.copy_snapshots, store_backup._copy_table
    monkeypatch.setattr(backup, "copy_snapshots", copy_then_let_writes_land)
    monkeypatch.setattr(store_backup, "_copy_table", table_then_let_writes_land)
    writer.start()
    try:
        writer.wait_for(10)
        manifest = backup.backup(src, tmp_path / "bk")
        monkeypatch.undo()
        writer.wait_for(10)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None
    assert paused == ["after the snapshots"] + (["between tables"] if db_url else [])
    seqs = {c["name"]: c for c in manifest["collections"]}
    for name in KINDS:  # writes landed before the snapshot copy, between it and the rows, and after the backup
        assert 0 < seqs[name]["snapshot_seq"] < seqs[name]["seq"] < src.get_collection(name).seq
        assert_holds(src, name, state_at(initial[name], writer.log[name], src.get_collection(name).seq))  # the oracle

    backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)
    with caplog.at_level(logging.INFO, logger="simdex.service.collection"):
        dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    try:
        for name, (metric, index) in KINDS.items():
            expected = state_at(initial[name], writer.log[name], seqs[name]["seq"])
            info = dst.get_collection(name)
            assert (info.seq, info.count, info.metric, info.index) == (seqs[name]["seq"], len(expected), metric, index)
            assert_holds(dst, name, expected)
            assert f"collection {name}: snapshot at seq {seqs[name]['snapshot_seq']} caught up" in caplog.text
            names = sorted(expected)
            xb = np.stack([expected[i][0] for i in names])
            xq = np.random.default_rng(2).standard_normal((20, DIM)).astype(np.float32)
            hits, _ = dst.search(name, xq, k=10)
            _, true = oracle(xb, xq, 10, metric)
            assert recall_at([h.ids for h in hits], true, names, 10) >= (1.0 if index == "Flat" else 0.95)
        assert dst.list_heads() == heads
        x = np.random.default_rng(3).standard_normal((7, DIM)).astype(np.float32)
        np.testing.assert_array_equal(dst.predict("hb", vectors=x).probabilities,
                                      src.predict("hb", vectors=x).probabilities)
    finally:
        dst.close()
        src.close()


def small_backup(tmp_path, db_url=None, name="bk") -> tuple[Simdex, dict]:
    """A store with collections a and b (and a head), its snapshots written, backed up into tmp_path / name."""
    src = Simdex(tmp_path / "src", db_url, snapshot_interval=0)
    fill(src)
    src.snapshot()
    return src, backup.backup(src, tmp_path / name)


def test_restored_collection_ids_are_never_reused(tmp_path, db_url, target_url):
    src, _ = small_backup(tmp_path, db_url, "first")
    src.create_collection("gone", DIM)
    gone = src.store.get_collection("gone").id
    src.delete_collection("gone")
    backup.backup(src, tmp_path / "bk")
    src.close()
    backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)
    dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    try:
        dst.create_collection("new", DIM)
        assert dst.store.get_collection("new").id > gone
        dst.train_head(HeadSpec(collection="b", head="hb2", label_field="lab"))  # a head id the sequence gives
        assert [h.name for h in dst.list_heads()] == ["hb", "hb2"]
    finally:
        dst.close()


@pytest.fixture
def other_url(db_url):
    """An empty database of the other kind than db_url's: PostgreSQL for SQLite, SQLite (None) for PostgreSQL."""
    if db_url is not None:
        yield None
        return
    if not PG_URL:
        pytest.skip("SIMDEX_TEST_PG is not set")
    import sqlalchemy as sa

    url, engine, schema = _pg_schema_url(PG_URL)
    yield url
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def test_a_backup_restores_into_the_other_database(tmp_path, db_url, other_url):
    src, manifest = small_backup(tmp_path, db_url)
    try:
        backup.restore(tmp_path / "bk", tmp_path / "dst", other_url)
        dst = Simdex(tmp_path / "dst", other_url, snapshot_interval=0)
        try:
            assert [(c.name, c.seq, c.count) for c in dst.list_collections()] == \
                [(c["name"], c["seq"], c["items"]) for c in manifest["collections"]]
            for name in KINDS:
                items = src.get(name, [f"i{j}" for j in range(N)])
                assert_holds(dst, name, {it.id: (it.vector, it.metadata, it.content_hash) for it in items})
            assert dst.list_heads() == src.list_heads()
        finally:
            dst.close()
    finally:
        src.close()


def test_restore_refuses_a_store_that_is_not_empty(tmp_path, db_url, target_url):
    src, _ = small_backup(tmp_path, db_url)
    src.close()
    dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    dst.create_collection("other", 4)
    dst.upsert("other", ["x"], np.ones((1, 4), np.float32))
    dst.close()  # which writes its index snapshot
    with pytest.raises(FailedPrecondition, match=r"dst/indexes holds index snapshots: .*empty store only"):
        backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)
    for path in (tmp_path / "dst" / "indexes").glob("*.npz"):
        path.unlink()
    with pytest.raises(FailedPrecondition, match=r"already holds 1 collection\(s\) \('other'\).*empty store only"):
        backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)
    dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    try:
        assert [c.name for c in dst.list_collections()] == ["other"]
        assert dst.count("other") == 1
    finally:
        dst.close()


def _rewrite_manifest(folder, change) -> None:
    path = folder / backup.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _flip_byte(path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "not a complete simdex backup: manifest.json is missing"),
    "manifest not JSON": (lambda f: (f / "manifest.json").write_text('{"format": '), "manifest.json is damaged"),
    "no snapshot": (lambda f: (f / "indexes" / "1.npz").unlink(), r"partial: indexes/1\.npz, listed in its "
                                                                   r"manifest\.json, is missing"),
    "no database": (lambda f: (f / "simdex.db").unlink(), r"partial: simdex\.db, listed .* is missing"),
    "database truncated": (lambda f: (f / "simdex.db").write_bytes((f / "simdex.db").read_bytes()[:4096]),
                           r"corrupt: simdex\.db has 4096 bytes of sha256 \w+, its manifest\.json says"),
    "snapshot byte flipped": (lambda f: _flip_byte(f / "indexes" / "2.npz"), r"corrupt: indexes/2\.npz has"),
    "count edited": (lambda f: _rewrite_manifest(f, lambda m: m["collections"][0].update(items=N + 1)),
                     r"corrupt: its simdex\.db holds collections .* its manifest\.json says"),
    "head dropped": (lambda f: _rewrite_manifest(f, lambda m: m["heads"].clear()), r"holds heads \[\{'name': 'hb'"),
    "other schema": (lambda f: _rewrite_manifest(f, lambda m: m.update(schema_revision="9999")),
                     rf"schema revision '9999' .* restores revision {store_backup.head_revision()}"),
    "path outside": (lambda f: _rewrite_manifest(f, lambda m: m["files"].update({"../x": {}})), r"lists '\.\./x', "
                                                                                                r"outside its folder"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_restore_refuses_a_corrupt_or_partial_backup(tmp_path, damage):
    src, _ = small_backup(tmp_path)
    src.close()
    spoil, message = DAMAGES[damage]
    spoil(tmp_path / "bk")
    with pytest.raises(InvalidArgument, match=message):
        backup.restore(tmp_path / "bk", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()  # refused before the target was touched


def test_a_restore_that_fails_leaves_nothing(tmp_path, db_url, target_url, monkeypatch):
    src, _ = small_backup(tmp_path, db_url)
    src.close()
    copyfile, calls = backup.shutil.copyfile, []

    def second_copy_fails(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return copyfile(a, b)

    monkeypatch.setattr(backup.shutil, "copyfile", second_copy_fails)
    with pytest.raises(OSError, match="No space left"):
        backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)
    monkeypatch.undo()
    assert len(calls) == 2 and not list((tmp_path / "dst" / "indexes").iterdir())
    dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    assert dst.list_collections() == [] and dst.list_heads() == []
    dst.close()
    backup.restore(tmp_path / "bk", tmp_path / "dst", target_url)  # the empty store takes the backup after all
    dst = Simdex(tmp_path / "dst", target_url, snapshot_interval=0)
    try:
        assert [c.count for c in dst.list_collections()] == [N, N]
    finally:
        dst.close()


def test_backup_refuses_an_existing_folder_and_a_missing_store(tmp_path):
    (tmp_path / "bk").mkdir()
    src = Simdex(tmp_path / "src", None, snapshot_interval=0)
    try:
        with pytest.raises(AlreadyExists, match="bk already exists"):
            backup.backup(src, tmp_path / "bk")
    finally:
        src.close()
    with pytest.raises(NotFound, match=r"no simdex database at .*nowhere/simdex\.db"):
        backup.backup_data(tmp_path / "bk2", tmp_path / "nowhere")
    assert not (tmp_path / "bk2").exists() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "src"]  # no partial folder left


def test_backup_of_a_data_directory_while_its_server_runs(tmp_path):
    src, first = small_backup(tmp_path)
    try:
        src.upsert("a", ["late"], np.ones((1, DIM), np.float32))
        manifest = backup.backup_data(tmp_path / "offline", tmp_path / "src")
    finally:
        src.close()
    counts = {c["name"]: (c["items"], c["seq"]) for c in manifest["collections"]}
    assert counts["a"] == (N + 1, first["collections"][0]["seq"] + 1) and counts["b"][0] == N
    assert backup.verify(tmp_path / "offline") == manifest


def test_client_backup_is_the_same_remote_and_local(tmp_path, client):
    """Client.backup over gRPC (the Backup RPC, streamed in many pieces here) and in-process give equal backups."""
    x = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
    client.create_collection("c", DIM)
    client.upsert("c", [f"i{j}" for j in range(N)], x, [{"j": j} for j in range(N)])
    manifest = client.backup(tmp_path / "bk")
    assert backup.verify(tmp_path / "bk") == manifest
    assert [(c["name"], c["items"], c["seq"]) for c in manifest["collections"]] == [("c", N, 1)]
    backup.restore(tmp_path / "bk", tmp_path / "dst")
    with Client.local(str(tmp_path / "dst"), snapshot_interval=0) as dst:
        items = dst.get("c", [f"i{j}" for j in range(N)])
    np.testing.assert_array_equal(np.stack([it.vector for it in items]), x)
    assert [it.metadata for it in items] == [{"j": j} for j in range(N)]


def test_backup_rpc_streams_in_pieces_under_the_message_limit_and_cleans_up(tmp_path):
    srv = InProcessServer(tmp_path / "srv", max_message_mb=0.02)  # 10 KiB pieces
    try:
        fill(srv.service)
        srv.service.snapshot()
        with Client(srv.target, max_message_mb=0.02) as c:
            manifest = c.backup(tmp_path / "bk")
        assert manifest["files"]["simdex.db"]["bytes"] > 10 * 1024
        assert backup.verify(tmp_path / "bk") == manifest
        assert not list((tmp_path / "srv").glob(".backup-*"))  # the server's copy is gone once streamed
    finally:
        srv.stop()
