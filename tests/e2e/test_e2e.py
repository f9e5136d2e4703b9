"""End-to-end tests against real `simdex serve` processes (see tests/proc.py).

Crash safety (kill -9 in the middle of upsert streams, with and without index snapshots), graceful stop on
SIGTERM, bearer-token auth, TLS, server reflection, the CLI round trip and the loopback default bind.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from conftest import oracle
from proc import health_check, run_cli
from simdex.clients import Client, NotFound, Unauthenticated, Unavailable
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.wire import pack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


# ---- 1. kill -9 in the middle of a stream of upserts ----------------------------------------------------------

DIM = 16
BATCH = 200      # items per upsert stream (one transaction)
PARTS = 4        # messages per stream: the kill can land between two messages of one transaction
COL = "crash"


def batch_ids(b: int) -> list[str]:
    return [f"b{b}-{i}" for i in range(BATCH)]


def batch_vectors(b: int) -> np.ndarray:
    return np.random.default_rng(100_000 + b).standard_normal((BATCH, DIM)).astype(np.float32)


def upsert_messages(b: int):
    """One batch as a client stream of PARTS messages, with a pause between them (so kills land mid-stream)."""
    ids, x = batch_ids(b), batch_vectors(b)
    meta = [json.dumps({"batch": b, "i": i}) for i in range(BATCH)]
    step = BATCH // PARTS
    for j in range(0, BATCH, step):
        if j:
            time.sleep(0.002)
        data, shape = pack(x[j:j + step])
        yield pb.UpsertRequest(collection=COL, ids=ids[j:j + step], vectors=pb.Matrix(data=data, shape=shape),
                               metadata=meta[j:j + step])


class Writer(threading.Thread):
    """Upserts batch after batch until a call fails; `acked` holds the batches whose call returned."""

    def __init__(self, target: str, first: int):
        super().__init__(name="writer", daemon=True)
        self.target, self.next = target, first
        self.acked: list[int] = []
        self.attempted: int | None = None  # the batch of the call in progress, or of the call that failed
        self.error: grpc.RpcError | None = None
        self.unexpected: BaseException | None = None

    def run(self) -> None:
        channel = grpc.insecure_channel(self.target)
        stub = pb_grpc.SimdexStub(channel)
        try:
            while True:
                self.attempted = b = self.next
                r = stub.Upsert(upsert_messages(b), timeout=60)
                assert r.upserted == BATCH, r
                self.acked.append(b)
                self.next = b + 1
        except grpc.RpcError as exc:
            self.error = exc
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.unexpected = exc
        finally:
            channel.close()


def snapshot_files(data: Path) -> list[Path]:
    return sorted(p for p in (data / "indexes").glob("*.npz") if not p.name.endswith(".tmp.npz"))


def snapshot_seq(path: Path) -> int:
    with np.load(path, allow_pickle=False) as arrays:
        return int(arrays["seq"])


def wait_for(cond, what: str, timeout: float = 30.0, alive=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the writer stopped")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout}s")
        time.sleep(0.01)


def verify(target: str, present: set[int], maybe: int | None) -> set[int]:
    """Every batch in `present` wholly there, `maybe` wholly there or wholly absent, nothing else.

    Returns the batches that are present (`present` plus `maybe` when it made it)."""
    with Client(target) as c:
        if maybe is not None:
            n_maybe = c.count(COL, {"batch": maybe})
            assert n_maybe in (0, BATCH), f"in-flight batch {maybe} is torn: {n_maybe} of {BATCH} items stored"
            if n_maybe:
                present = present | {maybe}
        want = BATCH * len(present)
        assert c.count(COL) == want, "index item count"
        assert c.count(COL, {"batch": {"$gte": 0}}) == want, "database item count"
        batches = sorted(present)
        ids = [i for b in batches for i in batch_ids(b)]
        if ids:
            items = c.get(COL, ids)  # NotFound if any acknowledged id is missing
            assert [it.id for it in items] == ids
            got = np.stack([it.vector for it in items])
            np.testing.assert_array_equal(got, np.concatenate([batch_vectors(b) for b in batches]))
            assert [it.metadata["batch"] for it in items] == [b for b in batches for _ in range(BATCH)]
            # Exact search of stored vectors finds each one itself: five rows of every batch, all of the last.
            rows = [0, 1, 57, 123, BATCH - 1]
            q_ids = [f"b{b}-{i}" for b in batches for i in rows] + batch_ids(batches[-1])
            xq = np.concatenate([batch_vectors(b)[rows] for b in batches] + [batch_vectors(batches[-1])])
            r = c.search(COL, xq, k=2)
            assert [h[0] for h in r.ids] == q_ids
            np.testing.assert_allclose(r.distances[:, 0], 0.0, atol=1e-4)
        info = c.get_collection(COL)
        assert info.count == want
        assert info.seq == len(present), "one committed transaction per batch"
    return present


@pytest.mark.parametrize("snapshot_interval,seed", [(0.0, 11), (0.2, 12)], ids=["no-snapshot", "snapshot-0.2s"])
def test_kill9_during_upsert_streams_loses_no_acknowledged_write(procs, tmp_path, snapshot_interval, seed, db_url):
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"
    args = ("--snapshot-interval", str(snapshot_interval)) + (("--db", db_url) if db_url else ())
    srv = procs.start(data, *args)
    with Client(srv.target) as c:
        c.create_collection(COL, DIM, "l2", "Flat")

    present: set[int] = set()
    first = 0
    caught_up = []  # (snapshot seq, database seq) of every restore from a snapshot
    for round_ in range(2):
        w = Writer(srv.target, first)
        w.start()
        try:
            start_acked = len(present)
            wait_for(lambda: len(w.acked) >= 3, "3 acknowledged batches", alive=w.is_alive)
            if snapshot_interval:
                # a snapshot of this round's writes exists before the kill
                wait_for(lambda: snapshot_files(data) and snapshot_seq(snapshot_files(data)[0]) > start_acked,
                         "a snapshot", alive=w.is_alive)
            time.sleep(float(rng.uniform(0.05, 0.6)))
            # Freeze the server at this moment (SIGSTOP), look at what is on disk, then kill -9 it frozen.
            srv.signal(signal.SIGSTOP)
            snaps = snapshot_files(data)
            if snapshot_interval:
                assert len(snaps) == 1, snaps
                snap = snapshot_seq(snaps[0])
                tries = 0
                while snap >= len(present) + len(w.acked) and tries < 50:
                    # the snapshot covers every acknowledged batch: let more be written so that the restart
                    # must catch up from the database
                    srv.signal(signal.SIGCONT)
                    time.sleep(0.05)
                    srv.signal(signal.SIGSTOP)
                    snap, tries = snapshot_seq(snaps[0]), tries + 1
            else:
                assert snaps == [], "--snapshot-interval 0 writes no snapshot while running"
            assert w.is_alive(), f"the writer stopped before the kill: {w.error or w.unexpected}"
            assert srv.kill() == -signal.SIGKILL
            w.join(timeout=60)
            assert not w.is_alive(), "the writer hung after the server was killed"
        finally:
            if w.is_alive():
                srv.kill()
                w.join(timeout=60)
        assert w.unexpected is None, repr(w.unexpected)
        assert w.error is not None and w.error.code() == grpc.StatusCode.UNAVAILABLE, w.error
        assert w.acked == list(range(first, first + len(w.acked)))
        acked = set(w.acked)
        inflight = w.attempted
        assert inflight == first + len(w.acked)

        srv = procs.start(data, *args)
        present = verify(srv.target, present | acked, inflight)
        first = inflight + 1

        log = srv.log_text()
        assert "snapshot unusable" not in log, srv.log_tail()
        if snapshot_interval:
            # restored the snapshot, then caught up every transaction committed after it from the database
            line = f"snapshot at seq {snap} caught up to {len(present)} (+{(len(present) - snap) * BATCH} items)"
            assert line in log, f"expected {line!r} in the restart log:\n{srv.log_tail()}"
            caught_up.append((snap, len(present)))
        else:
            assert "snapshot at seq" not in log, "no snapshot existed: the restart rebuilds from the database"

    if snapshot_interval:
        assert any(s < q for s, q in caught_up), f"no restart had to catch up after its snapshot: {caught_up}"
    # and the restarted server takes writes again, on top of what survived
    with Client(srv.target) as c:
        c.upsert(COL, batch_ids(first), batch_vectors(first), [{"batch": first}] * BATCH)
    verify(srv.target, present | {first}, None)
    assert srv.terminate() == 0


# ---- 2. SIGTERM ------------------------------------------------------------------------------------------------

def test_sigterm_stops_gracefully_writes_snapshot_and_restart_serves_same_data(procs, tmp_path):
    data = tmp_path / "data"
    srv = procs.start(data)  # default --snapshot-interval (30 s): the only snapshot is the one written on stop
    xb = np.random.default_rng(2).standard_normal((500, 12)).astype(np.float32)
    ids = [f"v{i}" for i in range(len(xb))]
    with Client(srv.target) as c:
        c.create_collection("t", 12)
        c.upsert("t", ids[:300], xb[:300], [{"part": 0}] * 300)
        c.upsert("t", ids[300:], xb[300:], [{"part": 1}] * 200)
        c.delete("t", ["v7", "v8"])
        seq = c.get_collection("t").seq
    assert snapshot_files(data) == []
    assert srv.terminate(timeout=10) == 0, srv.log_tail()
    assert "simdex stopped" in srv.log_text()

    snaps = snapshot_files(data)  # DATA/indexes/<collection id>.npz
    assert len(snaps) == 1, list((data / "indexes").iterdir())
    assert snapshot_seq(snaps[0]) == seq == 3

    srv = procs.start(data)
    assert f"snapshot at seq {seq} caught up to {seq} (+0 items)" in srv.log_text(), srv.log_tail()
    keep = [i for i in range(len(xb)) if i not in (7, 8)]
    with Client(srv.target) as c:
        assert c.count("t") == 498
        assert c.count("t", {"part": 1}) == 200
        items = c.get("t", [ids[i] for i in keep])
        np.testing.assert_array_equal(np.stack([it.vector for it in items]), xb[keep])
        with pytest.raises(NotFound):
            c.get("t", ["v7"])
        r = c.search("t", xb[keep], k=1)
        assert [h[0] for h in r.ids] == [ids[i] for i in keep]
        xq = np.random.default_rng(3).standard_normal((10, 12)).astype(np.float32)
        _, I = oracle(xb[keep], xq, 5)
        assert c.search("t", xq, k=5).ids == [[ids[keep[j]] for j in row] for row in I]
    assert srv.terminate(timeout=10) == 0


def test_sigterm_during_upsert_streams_finishes_them_and_snapshots_everything(procs, tmp_path):
    data = tmp_path / "data"
    srv = procs.start(data)
    with Client(srv.target) as c:
        c.create_collection(COL, DIM, "l2", "Flat")
    w = Writer(srv.target, 0)
    w.start()
    try:
        wait_for(lambda: len(w.acked) >= 3, "3 acknowledged batches", alive=w.is_alive)
        assert srv.terminate(timeout=15) == 0, srv.log_tail()
        w.join(timeout=60)
    finally:
        if w.is_alive():
            srv.kill()
            w.join(timeout=60)
    assert not w.is_alive() and w.unexpected is None, repr(w.unexpected)
    assert w.error is not None and w.error.code() == grpc.StatusCode.UNAVAILABLE, w.error
    (snap,) = snapshot_files(data)
    srv = procs.start(data)
    present = verify(srv.target, set(w.acked), w.attempted)
    # the snapshot written on stop covers every committed transaction: nothing to catch up
    n = len(present)
    assert snapshot_seq(snap) == n
    assert f"snapshot at seq {n} caught up to {n} (+0 items)" in srv.log_text(), srv.log_tail()


# ---- 3. bearer token -------------------------------------------------------------------------------------------

def test_bearer_token_auth(procs, tmp_path):
    token = "s3cret-token-e2e"
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    srv = procs.start(tmp_path / "data", "--token-file", str(tf))
    x = np.random.default_rng(4).standard_normal((20, 4)).astype(np.float32)

    with Client(srv.target) as c:
        with pytest.raises(Unauthenticated, match="token") as ei:
            c.list_collections()
        assert ei.value.code == "UNAUTHENTICATED"
        assert "missing bearer token" in ei.value.message
        with pytest.raises(Unauthenticated, match="token"):
            c.upsert("a", ["x"], x[:1])  # client-streaming RPCs are guarded too
    with Client(srv.target, token="wrong-" + token) as c:
        with pytest.raises(Unauthenticated, match="invalid bearer token"):
            c.create_collection("a", 4)
    with Client(srv.target, token=token) as c:
        c.create_collection("a", 4)
        assert c.upsert("a", [f"i{j}" for j in range(20)], x) == 20
        assert c.search("a", x[3], k=1).ids == [["i3"]]
        assert [i.name for i in c.list_collections()] == ["a"]
    # the wrong token wrote nothing
    with Client(srv.target, token=token) as c:
        assert c.count("a") == 20
    # health probes need no token
    assert health_check(srv.target).status == health_pb2.HealthCheckResponse.SERVING
    # the CLI reads --token-file
    out = run_cli("count", "a", "--target", srv.target, "--token-file", str(tf), cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "20"), out.stderr
    out = run_cli("count", "a", "--target", srv.target, cwd=tmp_path)
    assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr and "token" in out.stderr, out.stderr


# ---- 4. TLS ------------------------------------------------------------------------------------------------------

def self_signed(tmp_path: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls(procs, tmp_path):
    cert, key = self_signed(tmp_path)
    pem = cert.read_bytes()
    srv = procs.start(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), root_certificates=pem)
    x = np.random.default_rng(5).standard_normal((10, 3)).astype(np.float32)
    with Client(srv.target, tls=True, root_certificates=pem) as c:
        c.create_collection("s", 3)
        c.upsert("s", [str(i) for i in range(10)], x)
        assert c.search("s", x[4], k=1).ids == [["4"]]
    with Client(f"localhost:{srv.port}", tls=True, root_certificates=pem) as c:  # the DNS name of the cert
        assert c.count("s") == 10
    # a plaintext client cannot talk to a TLS server
    with Client(srv.target, timeout=10) as c:
        with pytest.raises(Unavailable):
            c.count("s")
    # nor a TLS client that does not trust the certificate
    other, _ = self_signed(tmp_path, "other")
    with Client(srv.target, tls=True, root_certificates=other.read_bytes(), timeout=10) as c:
        with pytest.raises(Unavailable):
            c.count("s")
    out = run_cli("count", "s", "--target", srv.target, "--tls-ca", str(cert), cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "10"), out.stderr


def test_tls_with_bearer_token(procs, tmp_path):
    """With TLS the client sends its token as call credentials, not as plain metadata: both must work."""
    cert, key = self_signed(tmp_path)
    pem = cert.read_bytes()
    tf = tmp_path / "token"
    tf.write_text("tls-and-token\n")
    srv = procs.start(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(tf),
                      root_certificates=pem)
    assert health_check(srv.target, root_certificates=pem).status == health_pb2.HealthCheckResponse.SERVING
    with Client(srv.target, tls=True, root_certificates=pem) as c:
        with pytest.raises(Unauthenticated, match="missing bearer token"):
            c.list_collections()
    with Client(srv.target, token="nope", tls=True, root_certificates=pem) as c:
        with pytest.raises(Unauthenticated, match="invalid bearer token"):
            c.list_collections()
    with Client(srv.target, token="tls-and-token", tls=True, root_certificates=pem) as c:
        c.create_collection("s", 2)
        assert c.upsert("s", ["p", "q"], np.array([[0, 1], [1, 0]], dtype=np.float32)) == 2
    out = run_cli("count", "s", "--target", srv.target, "--tls-ca", str(cert), "--token-file", str(tf), cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "2"), out.stderr


# ---- 5. reflection -----------------------------------------------------------------------------------------------

def test_reflection_lists_services(procs, tmp_path):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool

    srv = procs.start(tmp_path / "data")
    with grpc.insecure_channel(srv.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"simdex.v1.Simdex", "grpc.health.v1.Health"} <= services, services
        # and the schema comes with it: what grpcurl needs to call methods by name
        svc = DescriptorPool(db).FindServiceByName("simdex.v1.Simdex")
        methods = {m.name: m for m in svc.methods}
        assert {"CreateCollection", "Upsert", "Search", "Get", "Count"} <= set(methods)
        assert methods["Upsert"].input_type.full_name == "simdex.v1.UpsertRequest"


# ---- 6. CLI ----------------------------------------------------------------------------------------------------

def test_cli_round_trip(procs, tmp_path):
    srv = procs.start(tmp_path / "data")
    t = ["--target", srv.target]
    rng = np.random.default_rng(6)
    xb = rng.standard_normal((300, 8)).astype(np.float32)
    xq = rng.standard_normal((7, 8)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(len(xb))]
    kinds = ["a" if i % 3 == 0 else "b" for i in range(len(xb))]
    np.save(tmp_path / "vecs.npy", xb)
    np.save(tmp_path / "q.npy", xq)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps({"kind": k, "n": i}) + "\n" for i, k in enumerate(kinds)))

    def cli(*args, ok=True):
        out = run_cli(*args, *t, cwd=tmp_path)
        if ok:
            assert out.returncode == 0, f"simdex {' '.join(args)} -> {out.returncode}\n{out.stderr}"
        return out

    created = json.loads(cli("collections", "create", "c", "--dim", "8").stdout)
    assert (created["name"], created["dim"], created["metric"], created["index"]) == ("c", 8, "l2", "Flat")
    out = cli("upsert", "c", "vecs.npy", "--ids", "ids.txt", "--metadata", "meta.jsonl", "--chunk", "128")
    assert json.loads(out.stdout) == {"upserted": 300, "skipped": 0}

    rows = [json.loads(line) for line in cli("search", "c", "q.npy", "-k", "3").stdout.splitlines()]
    D, I = oracle(xb, xq, 3)
    assert [r["query"] for r in rows] == list(range(len(xq)))
    assert [r["ids"][0] for r in rows] == [ids[row[0]] for row in I]
    assert [r["ids"] for r in rows] == [[ids[j] for j in row] for row in I]
    np.testing.assert_allclose([r["distances"] for r in rows], D, rtol=1e-4, atol=1e-4)

    assert cli("count", "c", "--filter", '{"kind": "a"}').stdout.strip() == str(kinds.count("a"))
    assert cli("count", "c").stdout.strip() == "300"
    got = [json.loads(line) for line in cli("get", "c", "doc-5", "doc-9").stdout.splitlines()]
    assert [g["id"] for g in got] == ["doc-5", "doc-9"]
    assert got[1]["metadata"] == {"kind": "a", "n": 9}
    np.testing.assert_array_equal(np.array(got[0]["vector"], dtype=np.float32), xb[5])

    out = cli("search", "nope", "q.npy", "-k", "3", ok=False)
    assert out.returncode != 0 and out.stdout == ""
    assert "'nope'" in out.stderr and "NOT_FOUND" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


# ---- 7. loopback by default ------------------------------------------------------------------------------------

def listening(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the sockets listening on TCP `port`, from /proc/net/tcp and /proc/net/tcp6."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            addr_hex, port_hex = f[1].rsplit(":", 1)
            if f[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            # the address is 32-bit words, each in host (little-endian) byte order
            raw = b"".join(bytes.fromhex(addr_hex[i:i + 8])[::-1] for i in range(0, len(addr_hex), 8))
            found.append(ipaddress.ip_address(raw))
    return found


def test_binds_loopback_by_default(procs, tmp_path):
    srv = procs.start(tmp_path / "data", host=None)  # no --host
    assert "--host" not in srv.cmd
    assert health_check(f"127.0.0.1:{srv.port}").status == health_pb2.HealthCheckResponse.SERVING
    assert f"simdex listening on 127.0.0.1:{srv.port}" in srv.log_text()
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to inspect")
    addrs = listening(srv.port)
    # gRPC may listen on an IPv6 socket with the v4-mapped ::ffff:127.0.0.1: loopback all the same
    v4 = [a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a for a in addrs]
    assert v4 and all(a == ipaddress.ip_address("127.0.0.1") for a in v4), addrs
    assert not any(a.is_unspecified for a in addrs), f"listening on a wildcard address: {addrs}"
