"""Collection identity: ids never reused, writes that re-check the collection they resolved, failed creates that
leave nothing behind, index descriptions refused before any row exists, and a start that survives one collection
whose stored data cannot be loaded. SQLite always, PostgreSQL when SIMDEX_TEST_PG is set (the db_url fixture)."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from simdex.errors import FailedPrecondition, InvalidArgument, NotFound, SimdexError
from simdex.index import describe
from simdex.limits import Limits
from simdex.service.facade import Simdex
from simdex.wire import canonical_json, content_hash


def open_service(tmp_path, db_url, **kw) -> Simdex:
    return Simdex(tmp_path / "data", db_url, snapshot_interval=0, **kw)


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def cid(s: Simdex, name: str) -> int:
    return s.collections.get(name).info.id


# ---- ids ----------------------------------------------------------------------------------------------------
def test_a_deleted_collections_id_is_never_given_again(tmp_path, db_url):
    s = open_service(tmp_path, db_url)
    try:
        s.create_collection("a", 4)
        s.create_collection("b", 4)
        b = cid(s, "b")
        s.delete_collection("b")
        s.create_collection("b", 4)  # SQLite without AUTOINCREMENT handed out the same id again
        assert cid(s, "b") > b
        last = cid(s, "b")
        s.delete_collection("b")
    finally:
        s.close()
    s = open_service(tmp_path, db_url)  # and across a restart
    try:
        s.create_collection("c", 4)
        assert cid(s, "c") > last
    finally:
        s.close()


@pytest.mark.parametrize("new_dim", [8, 4])
def test_a_write_resolved_before_a_delete_and_create_of_its_name_writes_nothing(tmp_path, db_url, new_dim):
    """The race of the issue, made deterministic: resolve, then DeleteCollection + CreateCollection, then write."""
    s = open_service(tmp_path, db_url)
    try:
        s.create_collection("r", 8)
        s.upsert("r", ["old"], vectors(1, 8))
        stale = s.collections.get("r")
        s.delete_collection("r")
        s.create_collection("r", new_dim)
        x = vectors(3, 8, seed=1)
        metas = [{}] * 3
        hashes = [content_hash(x[i].tobytes(), canonical_json({})) for i in range(3)]
        with pytest.raises(NotFound, match="deleted"):
            stale.upsert(["a", "b", "c"], x, metas, hashes)
        with pytest.raises(NotFound, match="deleted"):
            stale.delete(["old"], ignore_missing=True)
        assert s.count("r") == 0
        assert s.get("r", ["a", "b", "c"], ignore_missing=True) == []
    finally:
        s.close()
    s = open_service(tmp_path, db_url)
    try:
        info = s.get_collection("r")
        assert (info.dim, info.count, info.unavailable) == (new_dim, 0, "")
    finally:
        s.close()


def test_racing_writers_and_recreates_never_write_into_the_wrong_collection(tmp_path, db_url):
    """Real threads: one upserts 8-d vectors into "r" while another deletes and re-creates "r" as 8-d or 4-d.
    Every write either lands in an 8-d incarnation or fails with NOT_FOUND / INVALID_ARGUMENT; afterwards every
    stored vector has its collection's dim, and the service opens again."""
    s = open_service(tmp_path, db_url)
    s.create_collection("r", 8)
    stop = threading.Event()
    seen: dict[str, int] = {}
    unexpected: list[BaseException] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                s.upsert("r", [f"w{i}-{j}" for j in range(20)], vectors(20, 8, seed=i))
                seen["ok"] = seen.get("ok", 0) + 1
            except (NotFound, InvalidArgument) as exc:
                seen[exc.code] = seen.get(exc.code, 0) + 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        rng = np.random.default_rng(0)
        for rnd in range(30):
            s.delete_collection("r")
            s.create_collection("r", 8 if rnd % 2 else 4)
            time.sleep(rng.uniform(0, 0.01))  # now and then an incarnation lives long enough for some writes
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not unexpected, unexpected
        assert seen.get("ok", 0) > 0
        iids, ext = s.store.live(cid(s, "r"))
        dim = s.get_collection("r").dim
        assert all(len(it.vector) == dim for it in (s.get("r", ext) if ext else []))
    finally:
        stop.set()
        s.close()
    s = open_service(tmp_path, db_url)
    try:
        info = s.get_collection("r")
        assert info.unavailable == "" and info.count == len(ext)
    finally:
        s.close()


def test_the_sqlite_migration_keeps_every_row_and_stops_reusing_ids(tmp_path):
    """A database made at revision 0002 (ids reused) keeps its collections, items and heads through 0003."""
    from alembic import command
    from alembic.config import Config

    from simdex.store import engine as engine_module
    from simdex.store.engine import make_engine

    path = tmp_path / "data" / "simdex.db"
    path.parent.mkdir()
    engine = make_engine(f"sqlite:///{path}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(engine_module.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        for i in (1, 2):
            conn.execute(text("INSERT INTO collections VALUES (:i, :n, 2, 'l2', 'Flat', '', '', 1, 1, 0)"),
                         {"i": i, "n": f"c{i}"})
            conn.execute(text("INSERT INTO items VALUES (:i, 0, 'x', '{}', :v, 'h', '', 1)"),
                         {"i": i, "v": np.float32([i, i]).tobytes()})
        conn.execute(text(
            "INSERT INTO heads (id, name, version, collection_id, target_id, kind, classes, metrics, params, shapes,"
            " weights, trained_on, embedder_fingerprint, target_fingerprint, created_unix_ms) VALUES"
            " (1, 'h', 1, 1, 2, 'projection', '[]', '{}', '{}', '[]', x'00', 1, '', '', 0)"))
    engine.dispose()
    s = Simdex(tmp_path / "data", None, snapshot_interval=0)  # migrates to the newest revision
    try:
        assert [c.name for c in s.list_collections()] == ["c1", "c2"]
        assert [it.vector.tolist() for it in s.get("c2", ["x"])] == [[2.0, 2.0]]
        with s.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM heads")).scalar() == 1
        s.delete_collection("c2")
        s.create_collection("c3", 2)
        assert cid(s, "c3") == 3
    finally:
        s.close()
    with sqlite3.connect(path) as db:
        assert "AUTOINCREMENT" in db.execute("SELECT sql FROM sqlite_master WHERE name='collections'").fetchone()[0]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


# ---- index descriptions --------------------------------------------------------------------------------------
REFUSED = [
    ("L2norm,Flat", 8, "cloning"),                       # FAISS cannot clone the transform: INTERNAL and a hidden row
    ("ITQ,LSH", 8, "cloning"),
    ("HNSW100000", 8, "--max-index-bytes-per-vector"),  # ~800 KB per vector
    ("IVF10000000,Flat", 8, "outside 1..1048576"),       # 1.5 GB of empty lists as the factory builds it
    ("PCA16,Flat", 16384, "--max-index-fixed-mb"),      # a 16384 x 16384 covariance to train: 2 GB
    ("NSG32", 8, "no later additions"),                  # and NSG aborts the process as it adds
    ("HNSW1", 8, "M >= 2"),                              # aborts the process
    ("PQ4x0", 8, "outside"),                             # aborts the process
    ("PQ4x20", 8, "bits per code"),
    ("IVF" + "9" * 200 + ",Flat", 8, "outside"),       # an int() of 4,301 digits or more raised ValueError
    ("Flat," * 60 + "Flat", 8, "at most 256"),          # longer than the column holds (DataError on PostgreSQL)
]


@pytest.mark.parametrize("desc, dim, why", REFUSED)
def test_refused_descriptions_name_the_reason(desc, dim, why):
    with pytest.raises(InvalidArgument, match=why.replace(".", r"\.")):
        describe.check(dim, "l2", desc)


@pytest.mark.parametrize("desc", ["Flat", "HNSW32", "IVF64,Flat", "PQ8x4fs", "PCA16,IVF64,SQ8,RFlat", "LSH",
                                  "OPQ8_16,IVF64,PQ8", "HNSW16_PQ8", "IVF64,RQ2x8", "SQfp16"])
def test_usable_descriptions_pass_and_estimate_their_memory(desc):
    extra = describe.check(32, "cosine", desc)
    assert 0 <= extra <= Limits().max_index_bytes_per_vector


def test_hnsw_memory_per_vector_follows_m():
    assert 260 <= describe.check(32, "l2", "HNSW32") <= 290           # 2M + ~1 links of 4 bytes, and 12
    with pytest.raises(InvalidArgument) as exc:
        describe.check(32, "l2", "HNSW8200")
    assert "--max-index-bytes-per-vector" in exc.value.message and "65536" in exc.value.message


@pytest.mark.parametrize("desc, limits", [
    ("L2norm,Flat", Limits()),
    ("HNSW100000", Limits()),
    ("IVF65536,Flat", Limits(max_index_fixed_mb=1)),    # 65,536 lists and centroids: ~12 MB
])
def test_a_refused_create_leaves_nothing_behind(tmp_path, db_url, desc, limits):
    s = open_service(tmp_path, db_url, limits=limits)
    try:
        with pytest.raises(InvalidArgument):
            s.create_collection("x", 8, "l2", desc)
        assert s.list_collections() == []
        s.create_collection("x", 8)  # the name is free: no hidden row
    finally:
        s.close()
    s = open_service(tmp_path, db_url, limits=limits)  # and the server starts again
    try:
        assert [(c.name, c.unavailable) for c in s.list_collections()] == [("x", "")]
    finally:
        s.close()


# ---- collections that cannot be loaded -----------------------------------------------------------------------
def damage(s: Simdex, name: str, how: str) -> None:
    """Make the stored data of `name` unloadable: a vector of the wrong size, or an index FAISS cannot clone."""
    with s.engine.begin() as conn:
        if how == "vector":
            conn.execute(text("UPDATE items SET vector = :v WHERE collection_id = :c"),
                         {"v": b"\x00" * 6, "c": cid(s, name)})
        else:
            conn.execute(text("UPDATE collections SET index_desc = 'L2norm,Flat' WHERE id = :c"), {"c": cid(s, name)})


@pytest.mark.parametrize("how", ["vector", "index"])
def test_an_unloadable_collection_is_reported_and_the_others_are_served(tmp_path, db_url, how):
    s = open_service(tmp_path, db_url)
    try:
        s.create_collection("good", 4)
        s.create_collection("bad", 4)
        s.upsert("good", ["g0", "g1"], vectors(2, 4))
        s.upsert("bad", ["b0", "b1"], vectors(2, 4, seed=3))
        bad_id = cid(s, "bad")
        damage(s, "bad", how)
    finally:
        s.close()
    snap = tmp_path / "data" / "indexes" / f"{bad_id}.npz"
    snap.write_bytes(snap.read_bytes()[:100])  # its snapshot truncated too: the database alone must load it
    s = open_service(tmp_path, db_url)
    try:
        hits, _ = s.search("good", vectors(2, 4), 1)
        assert [h.ids for h in hits] == [["g0"], ["g1"]]
        listed = {c.name: c for c in s.list_collections()}
        assert set(listed) == {"good", "bad"} and listed["good"].unavailable == ""
        assert "could not be loaded" in listed["bad"].unavailable and listed["bad"].count == 2
        assert s.get_collection("bad").unavailable == listed["bad"].unavailable
        for use in (lambda: s.search("bad", vectors(1, 4), 1), lambda: s.upsert("bad", ["n"], vectors(1, 4)),
                    lambda: s.get("bad", ["b0"]), lambda: s.count("bad"), lambda: s.delete("bad", ["b0"])):
            with pytest.raises(FailedPrecondition, match="collection 'bad' is unavailable"):
                use()
        s.delete_collection("bad")
        s.create_collection("bad", 4)
        s.upsert("bad", ["b0"], vectors(1, 4))
    finally:
        s.close()
    s = open_service(tmp_path, db_url)
    try:
        assert [(c.name, c.count, c.unavailable) for c in s.list_collections()] == [("bad", 1, ""), ("good", 2, "")]
    finally:
        s.close()


def test_an_unreadable_snapshot_is_set_aside_and_the_index_rebuilt(tmp_path, db_url):
    s = open_service(tmp_path, db_url)
    try:
        s.create_collection("c", 4)
        x = vectors(50, 4)
        s.upsert("c", [f"i{j}" for j in range(50)], x)
        c = cid(s, "c")
    finally:
        s.close()
    snap = tmp_path / "data" / "indexes" / f"{c}.npz"
    snap.write_bytes(snap.read_bytes()[:200])  # a zip cut short: np.load raises BadZipFile
    s = open_service(tmp_path, db_url)
    try:
        assert s.get_collection("c").unavailable == ""
        hits, _ = s.search("c", x[:3], 1)
        assert [h.ids for h in hits] == [["i0"], ["i1"], ["i2"]]
        assert (snap.parent / f"{c}.npz.unusable").exists()
    finally:
        s.close()


def test_snapshots_of_collections_that_no_longer_exist_are_removed_at_start(tmp_path):
    s = open_service(tmp_path, None)
    s.create_collection("c", 4)
    s.upsert("c", ["a"], vectors(1, 4))
    s.close()
    stale = tmp_path / "data" / "indexes" / "999.npz"  # e.g. killed between a delete's commit and its unlink
    stale.write_bytes((tmp_path / "data" / "indexes" / "1.npz").read_bytes())
    s = open_service(tmp_path, None)
    try:
        assert not stale.exists() and (tmp_path / "data" / "indexes" / "1.npz").exists()
    finally:
        s.close()


def test_no_simdex_error_escapes_as_another_type(tmp_path):
    """The damaged-row error is a SimdexError with the collection's id, not a reshape ValueError."""
    s = open_service(tmp_path, None)
    try:
        s.create_collection("c", 4)
        s.upsert("c", ["a", "b"], vectors(2, 4))
        damage(s, "c", "vector")
        with pytest.raises(SimdexError, match="damaged"):
            list(s.store.iter_vectors(cid(s, "c"), 4))
    finally:
        s.close()
