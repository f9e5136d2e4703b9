"""`simdex backup --target` against a real `simdex serve` taking writes (the admin's token required), `simdex backup
--data` of the same store while it serves, and `simdex restore` into a new store that a second server then serves:
the restored items equal the source's at the backup's sequence numbers."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from conftest import oracle
from proc import run_cli
from simdex.clients import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
DIM, N, TOKEN = 16, 1000, "backup-admin-token"


class LateWriter(threading.Thread):
    """One upsert per id late-0, late-1, ... into collection e until stopped: late-n commits at seq first + n."""

    def __init__(self, target: str):
        super().__init__(name="late-writer", daemon=True)
        self.target, self.n, self.stop, self.error = target, 0, threading.Event(), None

    def run(self) -> None:
        try:
            with Client(self.target, token=TOKEN) as c:
                while not self.stop.is_set():
                    c.upsert("e", [f"late-{self.n}"], late_vector(self.n)[None])
                    self.n += 1
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


def late_vector(n: int) -> np.ndarray:
    return np.random.default_rng(10_000 + n).standard_normal(DIM).astype(np.float32)


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_backup_of_a_served_store_restores_into_a_new_store(procs, tmp_path):
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    srv = procs.start(tmp_path / "data", "--token-file", str(tf), "--snapshot-interval", "0.2")
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    ids = [f"i{j}" for j in range(N)]
    with Client(srv.target, token=TOKEN) as c:
        c.create_collection("e", DIM)
        c.upsert("e", ids, x, [{"j": j} for j in range(N)])  # seq 1
        c.create_collection("h", DIM, "cosine", "HNSW32")
        c.upsert("h", ids, -x, [{"j": j} for j in range(N)])
    wait_until(lambda: len(list((tmp_path / "data" / "indexes").glob("*.npz"))) == 2)

    denied = run_cli("backup", "--target", srv.target, str(tmp_path / "denied"), cwd=tmp_path)
    assert denied.returncode == 2 and "UNAUTHENTICATED" in denied.stderr, denied.stderr
    assert not (tmp_path / "denied").exists()

    writer = LateWriter(srv.target)
    writer.start()
    try:
        wait_until(lambda: writer.n >= 5 or writer.error)
        out = run_cli("backup", "--target", srv.target, "--token-file", str(tf), str(tmp_path / "bk"), cwd=tmp_path)
        done = writer.n
        wait_until(lambda: writer.n > done + 5 or writer.error)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None, writer.error
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    seq = summary["seq"]["e"]
    late = seq - 1  # late-0 .. late-(late - 1) are in the backup
    assert 5 <= late < writer.n
    assert (summary["collections"], summary["items"], summary["index_snapshots"]) == (2, 2 * N + late, 2)

    offline = run_cli("backup", "--data", str(tmp_path / "data"), str(tmp_path / "bk-data"), cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["items"] == 2 * N + writer.n  # the store as it is now, served

    restored = run_cli("restore", str(tmp_path / "bk"), "--data", str(tmp_path / "restored"), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["seq"] == summary["seq"]
    again = run_cli("restore", str(tmp_path / "bk"), "--data", str(tmp_path / "restored"), cwd=tmp_path)
    assert again.returncode == 2 and "restore goes into an empty store only" in again.stderr, again.stderr

    srv2 = procs.start(tmp_path / "restored")
    with Client(srv2.target) as c:
        assert c.get_collection("e").seq == seq and c.count("e") == N + late
        expected = np.concatenate([x, np.stack([late_vector(n) for n in range(late)])])
        names = ids + [f"late-{n}" for n in range(late)]
        items = c.get("e", names)
        np.testing.assert_array_equal(np.stack([it.vector for it in items]), expected)
        assert c.get("e", [f"late-{late}"], ignore_missing=True) == []
        got = c.search("e", x[:20] + 0.01, k=10)
        _, true = oracle(expected, x[:20] + 0.01, 10)
        assert got.ids == [[names[j] for j in row] for row in true]
        h = c.get("h", ids)
        np.testing.assert_array_equal(np.stack([it.vector for it in h]), -x)
        assert [it.metadata for it in h] == [{"j": j} for j in range(N)]
