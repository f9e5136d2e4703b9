"""`simdex index`: folders (images, DICOM, bad files), file lists, .npy and Parquet sources; resuming after kill -9;
remote-embed and local-embed agreeing."""
from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from proc import Procs, server_env
from simdex.clients import Client

EMB = "densenet-bc-random"  # 32x32 input, seeded random weights: fast and nothing to download


# ---- helpers ------------------------------------------------------------------------------------------------
def png(seed: int, size=(40, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).resize(size[::-1], Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def pydicom_file(name: str) -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / name


def make_folder(root: Path, n: int) -> list[str]:
    """n PNGs in two levels, a DICOM with and one without extension (2 frames: the middle one is frame 1),
    a truncated PNG, a text file named .jpg and a README that is no image at all. Returns the good ids."""
    (root / "sub").mkdir(parents=True)
    good = []
    for i in range(n):
        rel = f"sub/p{i:03d}.png" if i % 2 else f"p{i:03d}.png"
        (root / rel).write_bytes(png(i))
        good.append(rel)
    shutil.copy(pydicom_file("CT_small.dcm"), root / "ct.dcm")
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), root / "sub" / "scan")
    (root / "bad.png").write_bytes(png(999)[:150])
    (root / "notes.jpg").write_text("not an image")
    (root / "README.txt").write_text("ignored: not an image extension")
    return sorted(good + ["ct.dcm", "sub/scan"])


def fresh_vectors(root: Path, ids: list[str]) -> np.ndarray:
    """The oracle: each file decoded and embedded alone, in this process."""
    from simdex.embedder import registry
    from simdex.embedder.decode import decode_image

    emb = registry.load(EMB)
    return np.concatenate([emb.embed_images([decode_image((root / i).read_bytes(), i)[0].rgb]) for i in ids])


def default_mode() -> str:
    """What `--data` picks when not told: remote-embed unless torch sees a GPU."""
    import torch

    from simdex.jobs.indexer import default_remote_embed

    return "remote-embed" if default_remote_embed(True, torch.cuda.is_available()) else "local-embed"


def run_cli(argv: list[str]) -> int:
    """`simdex index ARGV` in this process, parsed by the real CLI."""
    from simdex.cli.main import build_parser

    args = build_parser().parse_args(["index", *argv])
    return args.func(args)


def summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def stored(c, collection: str, ids: list[str], vectors: bool = False):
    return c.get(collection, ids, with_vectors=vectors, ignore_missing=True)


def all_ids(c, collection: str, candidates: list[str]) -> list[str]:
    """Every stored id, checked to be among `candidates` by the count (no strays)."""
    found = sorted(it.id for it in stored(c, collection, candidates))
    assert c.count(collection) == len(found), "items stored under unexpected ids"
    return found


# ---- folders ------------------------------------------------------------------------------------------------
def test_folder_reports_bad_files_then_skips_stored_and_retries_failures(tmp_path, capsys, monkeypatch):
    root = tmp_path / "imgs"
    good = make_folder(root, 10)
    monkeypatch.chdir(tmp_path)
    data = str(tmp_path / "data")
    args = [str(root), "--collection", "scans", "--embedder", EMB, "--data", data, "--workers", "1",
            "--chunk-size", "4", "--batch-size", "4", "--json", "--no-progress"]

    assert run_cli(args) == 1  # some inputs failed
    out, err = capsys.readouterr()
    s = summary(out)
    assert (s["indexed"], s["skipped"], s["failed"], s["mode"]) == (len(good), 0, 2, default_mode())
    report = [json.loads(x) for x in (tmp_path / "scans.index-errors.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in report) == ["bad.png", "notes.jpg"]
    assert "truncated" in next(r["reason"] for r in report if r["id"] == "bad.png")
    assert "bad.png" in err and "notes.jpg" in err
    with Client.local(data) as c:
        assert all_ids(c, "scans", good + ["bad.png", "notes.jpg", "README.txt"]) == good
        items = stored(c, "scans", good, vectors=True)
        np.testing.assert_allclose(np.stack([it.vector for it in items]), fresh_vectors(root, good), atol=1e-5)
        meta = {it.id: it.metadata for it in items}
        assert meta["ct.dcm"]["Modality"] == "CT" and meta["ct.dcm"]["path"] == str((root / "ct.dcm").absolute())
        assert meta["sub/scan"]["frame"] == 1 and meta["sub/scan"]["NumberOfFrames"] == 2
        assert "PatientName" not in meta["ct.dcm"]

    (root / "bad.png").write_bytes(png(999))  # repaired: the next run stores it, and only it
    assert run_cli(args) == 1
    out, err = capsys.readouterr()
    s = summary(out)
    assert (s["indexed"], s["skipped"], s["failed"]) == (1, len(good), 1)
    report = [json.loads(x) for x in (tmp_path / "scans.index-errors.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == ["notes.jpg"]  # rewritten, not appended
    with Client.local(data) as c:
        assert all_ids(c, "scans", good + ["bad.png"]) == sorted(good + ["bad.png"])


def test_kill_9_mid_run_then_rerun_stores_every_file_once(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    ids = [f"f{i:03d}.png" for i in range(160)]
    for i, name in enumerate(ids):
        (root / name).write_bytes(png(i))
    procs = Procs(tmp_path)
    try:
        srv = procs.start(tmp_path / "srv", "--snapshot-interval", "0")
        cmd = [sys.executable, "-m", "simdex", "index", str(root), "--collection", "k", "--embedder", EMB,
               "--target", srv.target, "--local-embed", "--workers", "1", "--batch-size", "4",
               "--chunk-size", "4", "--json", "--no-progress"]
        log = open(tmp_path / "index-1.log", "wb")  # noqa: SIM115
        job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=str(tmp_path))
        with Client(srv.target) as c:
            n_at_kill = _kill_after_first_chunks(c, job, 8)
            log.close()
            assert 8 <= n_at_kill < len(ids), (n_at_kill, (tmp_path / "index-1.log").read_text()[-2000:])

            done = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), cwd=str(tmp_path),
                                  timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            s = summary(done.stdout)
            assert s["skipped"] >= n_at_kill and s["indexed"] + s["skipped"] == len(ids) and s["failed"] == 0
            assert all_ids(c, "k", ids) == ids
            got = np.stack([it.vector for it in stored(c, "k", ids, vectors=True)])
        np.testing.assert_allclose(got, fresh_vectors(root, ids), atol=1e-5)
    finally:
        procs.cleanup()


def _kill_after_first_chunks(c, job: subprocess.Popen, n: int) -> int:
    """SIGKILL the indexer once at least `n` items are acknowledged; the count right after."""
    from simdex.clients import NotFound

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and job.poll() is None:
        try:
            if c.count("k") >= n:
                break
        except NotFound:  # the job has not created the collection yet
            pass
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    return c.count("k")


# ---- other sources ------------------------------------------------------------------------------------------
def test_file_list_source_and_remote_embed_agrees_with_local_embed(tmp_path, capsys, server):
    root = tmp_path / "imgs"
    good = make_folder(root, 6)
    lst = root / "sub" / "list.txt"  # paths relative to the list's folder, a comment, a blank and a missing file
    lines = [f"../{g}" if not g.startswith("sub/") else g[4:] for g in good] + ["# comment", "", "gone.png",
                                                                                  "../bad.png"]
    lst.write_text("\n".join(lines) + "\n")
    want = sorted(lines[:len(good)])
    common = ["--embedder", EMB, "--target", server.target, "--workers", "1", "--json", "--no-progress",
              "--chunk-size", "3"]
    reasons = {}
    for mode in ("local", "remote"):
        err_file = tmp_path / f"{mode}.jsonl"
        assert run_cli([str(lst), "--collection", mode, f"--{mode}-embed", "--errors", str(err_file), *common]) == 1
        s = summary(capsys.readouterr().out)
        assert (s["mode"], s["indexed"], s["failed"]) == (f"{mode}-embed", len(good), 2)
        rows = [json.loads(x) for x in err_file.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == ["../bad.png", "gone.png"]
        reasons[mode] = {r["id"]: r["reason"] for r in rows}
    # the service names the bad file by its index in the request (err.item); the report names it by id and path,
    # with the same reason in both modes
    assert reasons["remote"] == reasons["local"]
    assert reasons["remote"]["../bad.png"].startswith("cannot decode image (150 bytes): ")
    with Client(server.target) as c:
        assert all_ids(c, "local", want) == want
        local = stored(c, "local", want, vectors=True)
        remote = stored(c, "remote", want, vectors=True)
    assert [it.id for it in remote] == want
    np.testing.assert_allclose(np.stack([it.vector for it in remote]), np.stack([it.vector for it in local]),
                               atol=1e-5)
    assert [it.metadata for it in remote] == [it.metadata for it in local]  # DICOM tags, path, frame alike


def test_npy_with_ids_file_round_trips_and_reports_bad_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    x[7, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    ids = [f"row-{i}" for i in range(50)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    data = str(tmp_path / "data")
    args = [str(tmp_path / "x.npy"), "--collection", "v", "--data", data, "--ids-file", str(tmp_path / "ids.txt"),
            "--metric", "l2", "--chunk-size", "16", "--json", "--no-progress", "--errors", str(tmp_path / "e.jsonl")]
    assert run_cli(args) == 1
    s = summary(capsys.readouterr().out)
    assert (s["mode"], s["indexed"], s["failed"]) == ("vectors", 49, 1)
    assert json.loads((tmp_path / "e.jsonl").read_text())["id"] == "row-7"
    keep = [i for i in range(50) if i != 7]
    with Client.local(data) as c:
        assert c.get_collection("v").metric == "l2"
        items = c.get("v", [ids[i] for i in keep])
        np.testing.assert_array_equal(np.stack([it.vector for it in items]), x[keep])
    assert run_cli(args) == 1
    s = summary(capsys.readouterr().out)
    assert (s["indexed"], s["skipped"]) == (0, 49)


def test_parquet_ids_metadata_and_vectors_round_trip(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(30)]
    table = pa.table({"id": ids, "emb": pa.array(list(x), type=pa.list_(pa.float32())),
                      "site": [f"s{i % 3}" for i in range(30)], "age": list(range(30))})
    pq.write_table(table, tmp_path / "v.parquet", row_group_size=7)
    data = str(tmp_path / "data")
    args = [str(tmp_path / "v.parquet"), "--collection", "pq", "--data", data, "--vector-column", "emb",
            "--chunk-size", "8", "--json", "--no-progress"]
    assert run_cli(args) == 0
    assert summary(capsys.readouterr().out)["indexed"] == 30
    with Client.local(data) as c:
        items = c.get("pq", ids)
        assert c.count("pq", {"site": "s1"}) == 10
    np.testing.assert_array_equal(np.stack([it.vector for it in items]), x)
    assert [it.metadata for it in items] == [{"site": f"s{i % 3}", "age": i} for i in range(30)]


# ---- the remote pipeline against a fake client: the bad input is found by err.item, never by the message ---------
class _FakeService:
    """Just enough of a Client for remote-embed: stores what an upsert sends, rejects an image b"bad..." with
    InvalidArgument(item=i), as the service does, and b"whole..." as an error about the request (item None)."""

    in_process, embedder_pool = False, None

    def __init__(self, budget: int | None = None):
        self.items: dict[str, bytes] = {}
        self.calls: list[list[str]] = []
        self.budget = budget  # bytes one request may decode, like --max-decoded-mpixels (None: no budget)

    def get_collection(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(name=name, embedder=EMB, dim=342, embedder_fingerprint="")

    def get(self, collection, ids, with_vectors=True, ignore_missing=False):
        return []

    def upsert(self, collection, ids, vectors=None, metadata=None, content_hashes=None, *, images=None, **kw):
        from simdex.errors import InvalidArgument, ResourceExhausted

        self.calls.append(list(ids))
        total = 0
        for i, b in enumerate(images):
            total += len(b)
            if self.budget is not None and total > self.budget:
                raise ResourceExhausted(f"images[{i}]: decoded size {total} is over the server's limit", item=i)
            if b.startswith(b"whole"):
                raise InvalidArgument("embedder is not ready (a request-level error)")
            if b.startswith(b"bad"):
                raise InvalidArgument(f"images[{i}] (id {ids[i]!r}): cannot decode image: {b.decode()}", item=i)
        self.items.update(zip(ids, images))
        return len(ids)


def _fake_run(tmp_path, contents: dict[str, bytes], budget: int | None = None):
    from simdex.jobs.indexer import Indexer, IndexOptions

    root = tmp_path / "files"
    root.mkdir()
    for name, data in contents.items():
        (root / name).write_bytes(data)
    fake = _FakeService(budget)
    opts = IndexOptions("c", embedder=EMB, remote_embed=True, chunk_size=8, inflight=1, progress=False,
                        errors_file=str(tmp_path / "errors.jsonl"))
    return fake, Indexer(fake, opts, on_error=lambda row: None), root


def test_remote_embed_drops_only_the_inputs_the_service_names(tmp_path):
    names = [f"f{i}.png" for i in range(8)]
    contents = {n: (b"bad " + n.encode()) if n in ("f1.png", "f2.png", "f6.png") else png(i)
                for i, n in enumerate(names)}
    fake, job, root = _fake_run(tmp_path, contents)
    s = job.run(root)
    assert (s.indexed, s.failed) == (5, 3)
    assert sorted(fake.items) == ["f0.png", "f3.png", "f4.png", "f5.png", "f7.png"]
    report = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in report] == [
        (n, f"cannot decode image: bad {n}") for n in ("f1.png", "f2.png", "f6.png")]
    # the whole chunk, then around each bad file: the files before it (they decoded) again, then the rest
    assert fake.calls == [names, ["f0.png"], names[2:], names[3:], ["f3.png", "f4.png", "f5.png"], ["f7.png"]]


def test_remote_embed_stops_on_an_error_about_the_whole_request(tmp_path):
    from simdex.errors import InvalidArgument

    fake, job, root = _fake_run(tmp_path, {"a.png": png(1), "b.png": b"whole request fails"})
    with pytest.raises(InvalidArgument, match="request-level"):
        job.run(root)
    assert fake.items == {} and len(fake.calls) == 1  # not retried file by file


def test_remote_embed_splits_a_chunk_at_the_input_that_reaches_a_server_budget(tmp_path):
    names = [f"f{i}.png" for i in range(6)]
    contents = {n: png(0) for n in names}  # equal sizes: the budget holds two files and a half
    contents["f5.png"] = png(0) + b"\0" * 10_000  # over the budget on its own: the only file that fails
    size = len(contents["f0.png"])
    fake, job, root = _fake_run(tmp_path, contents, budget=2 * size + size // 2)
    s = job.run(root)
    assert (s.indexed, s.failed) == (5, 1)
    assert sorted(fake.items) == names[:5]
    # split at the input that reached the budget: the inputs before it alone, then on from that input
    assert fake.calls == [names, names[:2], names[2:], names[2:4], names[4:], names[4:5], names[5:]]
    report = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == ["f5.png"] and "limit" in report[0]["reason"]
