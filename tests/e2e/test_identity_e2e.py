"""Collection identity against real `simdex serve` processes (see tests/proc.py): two clients racing upserts
against DeleteCollection + CreateCollection of the same name, index descriptions that used to abort the server
or leave a hidden row, and restarts after a collection's stored data was made unloadable on purpose."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa

from proc import server_env
from simdex.clients import Client, FailedPrecondition, InvalidArgument, NotFound

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# The second client: its own process, upserting 8-d batches (of 20,000 and 50 rows, in turn) into "r" for `seconds` over raw gRPC (no client-side
# cache of the collection's dim), printing how many calls ended with each status.
WRITER = r"""
import json, sys, time
import grpc, numpy as np
from simdex.proto import simdex_pb2 as pb, simdex_pb2_grpc as pb_grpc
from simdex.wire import pack
target, seconds = sys.argv[1], float(sys.argv[2])
stub = pb_grpc.SimdexStub(grpc.insecure_channel(target))
codes, i, end = {}, 0, time.monotonic() + seconds
while time.monotonic() < end:
    i += 1
    n = 20000 if i % 2 else 50  # a big batch holds the collection it resolved for a while before its write
    data, shape = pack(np.random.default_rng(i).standard_normal((n, 8)).astype(np.float32))
    req = pb.UpsertRequest(collection="r", ids=[f"w{i}-{j}" for j in range(n)],
                           vectors=pb.Matrix(data=data, shape=shape))
    try:
        stub.Upsert(iter([req]), timeout=30)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    codes[code] = codes.get(code, 0) + 1
print(json.dumps(codes))
"""


def db_engine(data, db_url) -> sa.Engine:
    return sa.create_engine(db_url or f"sqlite:///{data / 'simdex.db'}")


def vector_sizes(data, db_url, name: str) -> tuple[int, set[int]]:
    """(the collection's dim, the byte sizes of its stored vectors), read from the database itself."""
    engine = db_engine(data, db_url)
    try:
        with engine.connect() as conn:
            cid, dim = conn.execute(sa.text("SELECT id, dim FROM collections WHERE name = :n"), {"n": name}).one()
            sizes = conn.execute(sa.text("SELECT DISTINCT length(vector) FROM items WHERE collection_id = :c"),
                                 {"c": cid}).scalars().all()
    finally:
        engine.dispose()
    return dim, set(sizes)


def test_two_clients_racing_recreates_and_upserts_never_cross_collections(procs, tmp_path, db_url):
    """One client process upserts 8-d vectors into "r" while this one deletes "r" and creates it again, as 4-d
    or 8-d. Every upsert is acknowledged into an 8-d incarnation or refused (NOT_FOUND, INVALID_ARGUMENT); the
    database never holds a vector of another dim, and the server restarts with "r" available, twice."""
    data = tmp_path / "data"
    db = ["--db", db_url] if db_url else []
    srv = procs.start(data, *db)
    with Client(srv.target) as c:
        c.create_collection("r", 8)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, srv.target, "6"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=server_env())
    rounds, rng = 0, np.random.default_rng(1)
    with Client(srv.target) as c:
        while writer.poll() is None and rounds < 400:
            c.delete_collection("r")
            c.create_collection("r", 4 if rounds % 2 == 0 else 8)
            rounds += 1
            time.sleep(rng.uniform(0, 0.02))  # now and then an incarnation lives long enough for some writes
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    codes = json.loads(out)
    assert set(codes) <= {"OK", "NOT_FOUND", "INVALID_ARGUMENT"}, codes
    assert rounds > 5 and codes.get("OK", 0) > 0, (rounds, codes)
    for _ in range(2):
        dim, sizes = vector_sizes(data, db_url, "r")
        assert sizes <= {4 * dim}, (dim, sizes)
        srv.terminate()
        srv = procs.start(data, *db)
        with Client(srv.target) as c:
            info = c.get_collection("r")
            assert (info.dim, info.unavailable) == (dim, "")


HOSTILE = ["HNSW1", "HNSW0", "PQ8x0", "RR0,Flat", "NSG32", "IVF4_HNSW1,Flat",  # each aborted the server process
           "L2norm,Flat", "ITQ,LSH",                                        # INTERNAL, a hidden row, no restart
           "HNSW100000", "IVF10000000,Flat", "IMI2x12,Flat"]                # ~800 KB a vector; 1.5 GB; 0.9 GB


def test_hostile_index_descriptions_are_refused_and_leave_nothing(procs, tmp_path):
    data = tmp_path / "data"
    srv = procs.start(data)
    with Client(srv.target) as c:
        for desc in HOSTILE:
            with pytest.raises(InvalidArgument, match="index"):
                c.create_collection("x", 8, "l2", desc)
            assert srv.alive(), srv.log_tail()
            assert c.list_collections() == []
        c.create_collection("x", 8)  # the name was never taken
    srv.terminate()
    srv = procs.start(data)
    with Client(srv.target) as c:
        assert [(i.name, i.unavailable) for i in c.list_collections()] == [("x", "")]


def test_the_server_starts_with_an_unloadable_collection_and_serves_the_others(procs, tmp_path, db_url):
    data = tmp_path / "data"
    db = ["--db", db_url] if db_url else []
    rng = np.random.default_rng(0)
    xg = rng.standard_normal((20, 4)).astype(np.float32)
    srv = procs.start(data, *db)
    with Client(srv.target) as c:
        c.create_collection("good", 4)
        c.create_collection("bad", 4)
        c.upsert("good", [f"g{i}" for i in range(20)], xg)
        c.upsert("bad", ["b0", "b1"], rng.standard_normal((2, 4)).astype(np.float32))
    srv.terminate()  # writes the snapshots
    engine = db_engine(data, db_url)
    with engine.begin() as conn:  # a vector cut short, as a reused id once left 8-d rows in a 4-d collection
        conn.execute(sa.text("UPDATE items SET vector = :v WHERE collection_id = "
                             "(SELECT id FROM collections WHERE name = 'bad')"), {"v": b"\x00" * 7})
        bad_id = conn.execute(sa.text("SELECT id FROM collections WHERE name = 'bad'")).scalar()
    engine.dispose()
    (data / "indexes" / f"{bad_id}.npz").unlink()  # so the start reads the rows
    srv = procs.start(data, *db)
    with Client(srv.target) as c:
        r = c.search("good", xg[:3], k=1)
        assert [ids[0] for ids in r.ids] == ["g0", "g1", "g2"]
        listed = {i.name: i.unavailable for i in c.list_collections()}
        assert listed["good"] == "" and "could not be loaded" in listed["bad"]
        assert "damaged" in c.get_collection("bad").unavailable
        with pytest.raises(FailedPrecondition, match="'bad' is unavailable"):
            c.search("bad", xg[:1], k=1)
        with pytest.raises(FailedPrecondition, match="'bad' is unavailable"):
            c.upsert("bad", ["n"], xg[:1])
        c.delete_collection("bad")
        with pytest.raises(NotFound):
            c.get_collection("bad")
    srv.terminate()
    srv = procs.start(data, *db)
    with Client(srv.target) as c:
        assert [(i.name, i.count, i.unavailable) for i in c.list_collections()] == [("good", 20, "")]


def test_a_killed_writer_of_a_deleted_collection_leaves_the_next_start_clean(procs, tmp_path):
    """kill -9 right after a DeleteCollection: its snapshot file may survive the row; the next collection (a new
    id) never restores it, and the file is removed at start."""
    data = tmp_path / "data"
    srv = procs.start(data)
    with Client(srv.target) as c:
        c.create_collection("a", 4)
        c.upsert("a", ["x"], np.ones((1, 4), np.float32))
    srv.terminate()
    snaps = list((data / "indexes").glob("*.npz"))
    assert len(snaps) == 1
    kept = snaps[0].read_bytes()
    srv = procs.start(data)
    with Client(srv.target) as c:
        c.delete_collection("a")
    srv.kill()
    snaps[0].write_bytes(kept)  # as if the kill landed between the delete's commit and its unlink
    srv = procs.start(data)
    with Client(srv.target) as c:
        c.create_collection("a", 4)
        assert c.count("a") == 0
        assert c.search("a", np.ones((1, 4), np.float32), k=1).ids == [[]]
    assert not snaps[0].exists()
