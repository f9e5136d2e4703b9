"""`simdex index --ray`: the Ray Data pipeline against the single-process indexer (same ids, vectors, metadata and
reports), resuming and retrying failures, a PACS source, and an embedding actor killed with SIGKILL mid-job while
the local runtime is checked to listen on loopback only.

Every Ray run is a `python -m simdex index ... --ray local` process that starts (and stops) its own local runtime:
Ray's processes, signal handlers and threads stay out of pytest's, and what it binds can be read off its process
tree. Start-up takes seconds on 2 loaded cores, hence the long timeouts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from proc import free_port, run_cli, server_env
from simdex.clients import Client, NotFound
from test_indexer import EMB, all_ids, fresh_vectors, make_folder, png, stored, summary

pytest.importorskip("ray.data", reason="--ray needs the ray extra: pip install -e '.[ray]'")

RAY_TIMEOUT = 400.0  # seconds for one `simdex index --ray` process


def index(source: str, cwd: Path, collection: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`simdex index SOURCE --collection C --embedder EMB --json --no-progress EXTRA` as a process -> (the process,
    its summary or None when it printed none)."""
    r = run_cli("index", source, "--collection", collection, "--embedder", EMB, "--json", "--no-progress", *extra,
                cwd=cwd, timeout=RAY_TIMEOUT)
    return r, (summary(r.stdout) if r.stdout.strip() else None)


def report(path: Path) -> dict[str, str]:
    return {row["id"]: row["reason"] for row in map(json.loads, path.read_text().splitlines())}


# ---- the same job as the single-process indexer ---------------------------------------------------------------
@pytest.mark.timeout(900)
def test_ray_job_stores_what_the_single_process_indexer_stores_and_resumes(tmp_path):
    root = tmp_path / "imgs"
    good = make_folder(root, 10)  # PNGs, a DICOM with and one without extension (2 frames), two bad files
    data = str(tmp_path / "data")
    common = ["--data", data, "--batch-size", "4", "--chunk-size", "4"]
    r, one = index(str(root), tmp_path, "one", *common, "--local-embed", "--workers", "1",
                   "--errors", str(tmp_path / "one.jsonl"))
    assert r.returncode == 1, r.stderr[-3000:]
    r, ray = index(str(root), tmp_path, "ray", *common, "--ray", "local", "--errors", str(tmp_path / "ray.jsonl"))
    assert r.returncode == 1, r.stderr[-3000:]

    assert ray.keys() == one.keys() and ray["mode"] == "ray"
    assert (ray["inputs"], ray["indexed"], ray["skipped"], ray["failed"]) == (len(good) + 2, len(good), 0, 2)
    assert report(tmp_path / "ray.jsonl") == report(tmp_path / "one.jsonl")  # same ids, same reasons
    assert "truncated" in report(tmp_path / "ray.jsonl")["bad.png"]
    assert "bad.png" in r.stderr and "notes.jpg" in r.stderr
    with Client.local(data) as c:
        assert all_ids(c, "ray", good + ["bad.png", "notes.jpg"]) == good
        want, got = stored(c, "one", good, vectors=True), stored(c, "ray", good, vectors=True)
    np.testing.assert_allclose(np.stack([it.vector for it in got]), np.stack([it.vector for it in want]), atol=1e-5)
    np.testing.assert_allclose(np.stack([it.vector for it in got]), fresh_vectors(root, good), atol=1e-5)
    assert [it.metadata for it in got] == [it.metadata for it in want]  # DICOM tags, path, frame alike
    assert [it.content_hash for it in got] == [it.content_hash for it in want]

    (root / "bad.png").write_bytes(png(999))  # repaired: the rerun stores it and only it, and retries notes.jpg
    r, again = index(str(root), tmp_path, "ray", *common, "--ray", "local", "--errors", str(tmp_path / "ray.jsonl"))
    assert r.returncode == 1, r.stderr[-3000:]
    assert (again["indexed"], again["skipped"], again["failed"]) == (1, len(good), 1)
    assert list(report(tmp_path / "ray.jsonl")) == ["notes.jpg"]
    with Client.local(data) as c:
        assert all_ids(c, "ray", good + ["bad.png", "notes.jpg"]) == sorted(good + ["bad.png"])
        (fixed,) = stored(c, "ray", ["bad.png"], vectors=True)
    np.testing.assert_allclose(fixed.vector[None], fresh_vectors(root, ["bad.png"]), atol=1e-5)

    (root / "notes.jpg").unlink()  # nothing left to do: every file skipped, and no Ray runtime needed for that
    r, last = index(str(root), tmp_path, "ray", *common, "--ray", "local", "--errors", str(tmp_path / "ray.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (last["indexed"], last["skipped"], last["failed"]) == (0, len(good) + 1, 0)
    assert "Ray" not in r.stderr


def test_ray_refuses_a_vector_source_an_embedding_mode_and_a_dead_address(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    r = run_cli("index", str(tmp_path / "x.npy"), "--collection", "v", "--data", str(tmp_path / "d"), "--ray",
                "local", cwd=tmp_path)
    assert r.returncode == 2 and "--ray embeds files" in r.stderr, r.stderr[-2000:]
    r = run_cli("index", str(tmp_path), "--collection", "v", "--ray", "--remote-embed", cwd=tmp_path)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr[-2000:]
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(0))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: refused quickly, not retried for minutes by Ray
    r, _ = index(str(tmp_path / "imgs"), tmp_path, "v", "--data", str(tmp_path / "d"), "--ray", dead)
    assert r.returncode == 2 and f"UNAVAILABLE: --ray {dead}: no Ray cluster answers there" in r.stderr, \
        r.stderr[-2000:]


@pytest.mark.timeout(900)
def test_ray_job_indexes_a_pacs_like_the_single_process_indexer(orthanc, server, tmp_path):
    from orthanc import samples, stow

    files = samples(4)
    pacs = orthanc()
    stow(pacs, files)
    uids = sorted(f.sop_uid for f in files)
    for name, mode in (("one", ["--local-embed", "--workers", "1"]), ("ray", ["--ray", "local"])):
        r, s = index(pacs.source, tmp_path, name, "--target", server.target, *mode)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (s["indexed"], s["fetched"], s["failed"]) == (len(files), len(files), 0)
    with Client(server.target) as c:
        want, got = stored(c, "one", uids, vectors=True), stored(c, "ray", uids, vectors=True)
    assert [it.id for it in got] == uids
    np.testing.assert_allclose(np.stack([it.vector for it in got]), np.stack([it.vector for it in want]), atol=1e-5)
    assert [it.metadata for it in got] == [it.metadata for it in want]


# ---- a killed Ray worker ----------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, their children, ...), read from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every TCP/UDP socket listening in one of `pids` (ss -ltunp)."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        for pid in pids:
            if f"pid={pid}," in line:
                found.append((line.split()[4], pid))
    return found


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


def _embed_actor(job: subprocess.Popen, deadline: float, log: Path, other_than: int = 0) -> int | None:
    """The pid of the job's embedding actor (Ray names its process after the actor class), other than the pid
    `other_than` (a restarted actor); None if the job ended before one was seen."""
    while time.monotonic() < deadline and job.poll() is None:
        for pid in descendants(job.pid):
            if pid != other_than and "MapBatches(Embed)" in title(pid):
                return pid
        time.sleep(0.1)
    assert job.poll() is not None, f"no embedding actor after {RAY_TIMEOUT} s: {log.read_text()[-3000:]}"
    return None


def _count(c, collection: str) -> int:
    try:
        return c.count(collection)
    except NotFound:  # not created yet
        return 0


@pytest.mark.timeout(900)
def test_killed_embedding_actor_costs_no_file_and_the_runtime_listens_on_loopback_only(tmp_path, server):
    root = tmp_path / "imgs"
    root.mkdir()
    ids = [f"f{i:03d}.png" for i in range(160)]
    for i, name in enumerate(ids):
        (root / name).write_bytes(png(i))
    cmd = [sys.executable, "-m", "simdex", "index", str(root), "--collection", "k", "--embedder", EMB,
           "--target", server.target, "--ray", "local", "--batch-size", "2", "--chunk-size", "4", "--json",
           "--no-progress"]
    log = tmp_path / "ray-1.log"
    with open(log, "wb") as fh, Client(server.target) as c:
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, env=server_env(), cwd=str(tmp_path))
        try:
            deadline = time.monotonic() + RAY_TIMEOUT
            actor = _embed_actor(job, deadline, log)
            assert actor is not None, f"the job ended (exit {job.returncode}) before its actor started: " + \
                log.read_text()[-3000:]
            while _count(c, "k") < 8 and time.monotonic() < deadline and job.poll() is None:
                time.sleep(0.05)
            sockets = listening([job.pid, *descendants(job.pid)])
            os.kill(actor, signal.SIGKILL)
            n_at_kill = c.count("k")
            successor = _embed_actor(job, deadline, log, other_than=actor)
            out, _ = job.communicate(timeout=RAY_TIMEOUT)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
        stderr = log.read_text(errors="replace")[-3000:]
        assert 8 <= n_at_kill < len(ids) - 8, (n_at_kill, stderr)  # killed mid-job
        # Ray's own processes (GCS, raylet, workers) were up and listening, every one of them on loopback
        assert len(sockets) >= 3, sockets
        assert [s for s in sockets if not is_loopback(s[0])] == [], sockets

        if job.returncode == 0:  # Ray restarted the actor and ran its batch again: this run stored everything
            assert successor is not None, "the job ended before a restarted actor was seen"
            s = summary(out.decode())
            assert s["indexed"] == len(ids), (s, stderr)
        else:  # the run failed: the rerun stores the rest, and nothing twice
            done = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), cwd=str(tmp_path),
                                  timeout=RAY_TIMEOUT)
            assert done.returncode == 0, done.stderr[-3000:]
            s = summary(done.stdout)
        assert s["indexed"] + s["skipped"] == len(ids) and s["failed"] == 0, s
        assert all_ids(c, "k", ids) == ids  # every file exactly once
        got = np.stack([it.vector for it in stored(c, "k", ids, vectors=True)])
    np.testing.assert_allclose(got, fresh_vectors(root, ids), atol=1e-5)
