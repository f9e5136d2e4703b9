"""`simdex index dicomweb+http://...`: a real PACS (Orthanc, tests/orthanc.py) loaded with pydicom's images by STOW-RS,
indexed by `simdex index` processes into an in-process server: every instance stored under its SOP Instance UID with
allow-listed tags only, content hashes of the bytes the PACS holds, a rerun that fetches only the new instance (counted
from the PACS's own request log), each instance its own nearest neighbour, QIDO-RS filters, frames, failures retried,
basic and token authentication, and the errors of bad options."""
from __future__ import annotations

import hashlib
import io
import json

import pydicom
import pytest

from conftest import InProcessServer
from orthanc import Sample, samples, stow
from proc import run_cli
from simdex.clients import Client
from simdex.embedder.dicom import SAFE_TAGS

EMB = "densenet-bc-random"  # 32x32 input, seeded random weights: fast and nothing to download
PHI_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "InstitutionName",
            "InstitutionAddress", "ReferringPhysicianName", "AccessionNumber", "StudyDescription", "StationName")


@pytest.fixture(scope="module")
def files() -> list[Sample]:
    got = samples()
    assert len(got) >= 12  # distinct pictures among pydicom's test files
    return got


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = InProcessServer(tmp_path_factory.mktemp("srv"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def c(srv):
    with Client(srv.target) as client:
        yield client


def index(pacs, srv, cwd, collection: str, *extra: str, auth: list[str] | None = None):
    """`simdex index PACS --collection C ... --json` as a process -> (CompletedProcess, summary dict or None)."""
    r = run_cli("index", pacs.source, "--collection", collection, "--embedder", EMB, "--target", srv.target,
                "--json", "--no-progress", *(pacs.cli_auth() if auth is None else auth), *extra, cwd=cwd,
                timeout=180)
    lines = r.stdout.strip().splitlines()
    return r, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None)


@pytest.fixture(scope="module")
def first(orthanc, files, srv, tmp_path_factory):
    """A PACS with basic authentication holding all the files but the last, indexed once into 'pacs'."""
    pacs = orthanc("basic")
    stow(pacs, files[:-1])
    cwd = tmp_path_factory.mktemp("first")
    before = len(pacs.wado_instance_requests())
    r, summary = index(pacs, srv, cwd, "pacs")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"pacs": pacs, "summary": summary, "wado": pacs.wado_instance_requests()[before:], "cwd": cwd}


@pytest.fixture(scope="module")
def rerun(first, files, srv):
    """The last file added to the PACS, then the same command again."""
    pacs = first["pacs"]
    stow(pacs, files[-1:])
    before = len(pacs.wado_instance_requests())
    r, summary = index(pacs, srv, first["cwd"], "pacs")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"summary": summary, "wado": pacs.wado_instance_requests()[before:]}


def _tags(f: Sample) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(f.data), stop_before_pixels=True)


def _orthanc_file(pacs, sop_uid: str) -> bytes:
    """The instance's file through Orthanc's own REST API (not DICOMweb): what the PACS holds."""
    import requests

    r = requests.post(pacs.url + "/tools/lookup", data=sop_uid, headers=pacs.headers(), timeout=10)
    r.raise_for_status()
    (hit,) = [h for h in r.json() if h["Type"] == "Instance"]
    f = pacs.get(f"/instances/{hit['ID']}/file")
    f.raise_for_status()
    return f.content


# ---- the first run ------------------------------------------------------------------------------------------------
def test_every_instance_is_stored_under_its_sop_instance_uid(first, files, c):
    n = len(files) - 1
    assert first["summary"]["indexed"] == n and first["summary"]["fetched"] == n
    assert c.count("pacs") == n
    got = c.get("pacs", [f.sop_uid for f in files[:-1]], with_vectors=False)
    assert [g.id for g in got] == [f.sop_uid for f in files[:-1]]
    assert sorted(first["wado"]) == sorted(f.sop_uid for f in files[:-1])  # each fetched once


def test_stored_tags_are_the_allow_list_and_no_identifying_value(first, files, c):
    got = c.get("pacs", [f.sop_uid for f in files[:-1]], with_vectors=False)
    for f, g in zip(files[:-1], got):
        assert set(g.metadata) - {"frame"} <= set(SAFE_TAGS), f.name
        assert "path" not in g.metadata  # a PACS instance has no file of its own to point at
        assert (g.metadata["StudyInstanceUID"], g.metadata["SeriesInstanceUID"], g.metadata["SOPInstanceUID"]) == \
            (f.study_uid, f.series_uid, f.sop_uid)
    stored = {str(v) for g in got for v in g.metadata.values()} | {str(v) for g in got for v in g.metadata}
    headers = [_tags(f) for f in files]
    safe = {str(ds.get(t)) for ds in headers for t in SAFE_TAGS}  # an InstitutionName may be another's Manufacturer
    phi = {str(ds.get(t)) for ds in headers for t in PHI_TAGS if len(str(ds.get(t) or "")) >= 4} - safe
    assert len(phi) >= 5  # the test files do carry names, ids and institutions
    assert not phi & stored


def test_content_hashes_are_the_sha256_of_the_bytes_the_pacs_holds(first, files, c):
    pacs = first["pacs"]
    for f, g in zip(files[:-1], c.get("pacs", [f.sop_uid for f in files[:-1]], with_vectors=False)):
        assert g.content_hash == hashlib.sha256(_orthanc_file(pacs, f.sop_uid)).hexdigest(), f.name


# ---- the rerun ----------------------------------------------------------------------------------------------------
def test_a_rerun_fetches_only_the_new_instance(rerun, files, c):
    assert rerun["wado"] == [files[-1].sop_uid]  # the PACS's own log: one WADO-RS retrieval
    s = rerun["summary"]
    assert (s["fetched"], s["indexed"], s["skipped"], s["failed"]) == (1, 1, len(files) - 1, 0)
    assert c.count("pacs") == len(files)


def test_each_instance_is_its_own_nearest_neighbour(rerun, files, c):
    r = c.search("pacs", images=[f.data for f in files], k=1)
    assert [ids[0] for ids in r.ids] == [f.sop_uid for f in files]


def test_local_embedding_reads_the_fetched_bytes_and_agrees_with_the_server(first, rerun, files, srv, c, tmp_path):
    import numpy as np

    r, s = index(first["pacs"], srv, tmp_path, "local", "--local-embed", "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (s["mode"], s["indexed"], s["fetched"]) == ("local-embed", len(files), len(files))
    ids = [f.sop_uid for f in files]
    here, there = c.get("local", ids), c.get("pacs", ids)
    assert all("path" not in g.metadata for g in here)  # the spool file is no place to find it again
    assert [g.metadata for g in here] == [g.metadata for g in there]
    np.testing.assert_allclose(np.stack([g.vector for g in here]), np.stack([g.vector for g in there]), atol=1e-5)


# ---- what to index ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--modality", "--study", "--since"])
def test_qido_filters_select_the_matching_instances(flag, rerun, files, first, srv, c, tmp_path):
    tags = {f.sop_uid: _tags(f) for f in files}
    if flag == "--modality":
        value, want = "CT", {u for u, t in tags.items() if t.get("Modality") == "CT"}
    elif flag == "--study":
        value = files[1].study_uid
        want = {u for u, t in tags.items() if t.StudyInstanceUID == value}
    else:
        dates = sorted({str(t.get("StudyDate") or "") for t in tags.values()} - {""})
        value = dates[len(dates) // 2]
        want = {u for u, t in tags.items() if str(t.get("StudyDate") or "") >= value}
    assert 0 < len(want) < len(files)
    coll = "f" + flag.strip("-")
    r, s = index(first["pacs"], srv, tmp_path, coll, flag, value)
    assert r.returncode == 0, r.stderr[-3000:]
    got = c.get(coll, [f.sop_uid for f in files], with_vectors=False, ignore_missing=True)
    assert {g.id for g in got} == want
    assert s["inputs"] == len(want)


def test_all_frames_gives_frame_ids_and_a_rerun_skips_them_unfetched(first, rerun, files, srv, c, tmp_path):
    pacs = first["pacs"]
    frames = {f.sop_uid: int(_tags(f).get("NumberOfFrames") or 1) for f in files}
    assert max(frames.values()) > 1
    r, s = index(pacs, srv, tmp_path, "frames", "--all-frames")
    assert r.returncode == 0, r.stderr[-3000:]
    want = [u if n == 1 else f"{u}#{i}" for u, n in frames.items() for i in range(n)]
    assert c.count("frames") == len(want)
    assert len(c.get("frames", want, with_vectors=False)) == len(want)
    before = len(pacs.wado_instance_requests())
    r, s = index(pacs, srv, tmp_path, "frames", "--all-frames")
    assert r.returncode == 0 and (s["fetched"], s["skipped"]) == (0, len(want))
    assert pacs.wado_instance_requests()[before:] == []


# ---- failures and access ------------------------------------------------------------------------------------------
def _no_pixels(f: Sample) -> Sample:
    """`f` without its pixel data, under a new SOP Instance UID: the PACS stores it, simdex cannot embed it."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(f.data))
    del ds.PixelData
    uid = generate_uid(entropy_srcs=["no-pixels", f.name])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Sample("no-pixels", buf.getvalue(), f.study_uid, f.series_uid, uid)


def test_an_instance_that_fails_is_reported_and_fetched_again_next_run(orthanc, files, srv, c, tmp_path):
    pacs = orthanc(None)
    bad = _no_pixels(files[1])
    stow(pacs, [files[0], bad])
    for run, fetched in enumerate(([files[0].sop_uid, bad.sop_uid], [bad.sop_uid])):
        before = len(pacs.wado_instance_requests())
        r, s = index(pacs, srv, tmp_path, "failing", auth=[])
        assert r.returncode == 1, r.stderr[-3000:]
        assert (s["indexed"], s["failed"]) == (1 - run, 1)
        report = [json.loads(line) for line in (tmp_path / "failing.index-errors.jsonl").read_text().splitlines()]
        assert [row["id"] for row in report] == [bad.sop_uid]
        assert report[0]["path"].endswith(f"/instances/{bad.sop_uid}") and "/dicom-web/studies/" in report[0]["path"]
        assert sorted(pacs.wado_instance_requests()[before:]) == sorted(fetched)
    assert {g.id for g in c.get("failing", [files[0].sop_uid, bad.sop_uid], ignore_missing=True)} == \
        {files[0].sop_uid}


def test_without_credentials_the_run_stops_unauthenticated_and_stores_nothing(first, srv, c, tmp_path):
    r, _ = index(first["pacs"], srv, tmp_path, "anonymous", auth=[])
    assert r.returncode == 2
    assert "UNAUTHENTICATED" in r.stderr and first["pacs"].dicomweb_url in r.stderr and "--pacs-user" in r.stderr
    assert "anonymous" not in {i.name for i in c.list_collections()}


def test_a_bearer_token_opens_a_pacs_that_wants_one(orthanc, files, srv, c, tmp_path):
    pacs = orthanc("token")
    stow(pacs, files[:3])
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    r, _ = index(pacs, srv, tmp_path, "tokened", auth=["--pacs-token-file", str(wrong)])
    assert r.returncode == 2 and "PERMISSION_DENIED" in r.stderr and "not-the-token" not in r.stderr + r.stdout
    r, s = index(pacs, srv, tmp_path, "tokened")
    assert r.returncode == 0, r.stderr[-3000:]
    assert s["indexed"] == 3 and c.count("tokened") == 3


@pytest.mark.parametrize("args, words", [
    (["--since", "2024-01-01"], "--since '2024-01-01': expected a date YYYYMMDD"),
    (["--study", "1.2.x"], "--study '1.2.x' is not a DICOM UID"),
    (["--modality", "ct;drop"], "--modality 'ct;drop'"),
    (["--pacs-user", "u"], "--pacs-user and --pacs-password-file go together"),
])
def test_bad_pacs_options_are_invalid_arguments(args, words, capsys, tmp_path):
    from simdex.cli.main import main

    rc = main(["index", "dicomweb+http://127.0.0.1:9/dicom-web", "--collection", "x", "--data", str(tmp_path),
               *args])
    err = capsys.readouterr().err
    assert rc == 2 and "INVALID_ARGUMENT" in err and words in err


def test_pacs_options_need_a_pacs_source(capsys, tmp_path):
    from simdex.cli.main import main

    rc = main(["index", str(tmp_path), "--collection", "x", "--data", str(tmp_path / "d"), "--modality", "CT"])
    assert rc == 2 and "PACS options need a dicomweb+http(s)://... source" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["dicomweb+ftp://h/x", "dicomweb+http://", "dicomweb+http://h:port/x"])
def test_a_malformed_pacs_url_is_an_invalid_argument(source, capsys, tmp_path):
    from simdex.cli.main import main

    rc = main(["index", source, "--collection", "x", "--data", str(tmp_path)])
    assert rc == 2 and "expected dicomweb+http://HOST:PORT/PATH" in capsys.readouterr().err


def test_an_unreachable_pacs_is_unavailable(capsys, tmp_path):
    from proc import free_port
    from simdex.cli.main import main

    rc = main(["index", f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web", "--collection", "x",
               "--data", str(tmp_path)])
    assert rc == 2 and "UNAVAILABLE: cannot reach the PACS at http://127.0.0.1:" in capsys.readouterr().err


def test_multipart_parts_are_split_at_their_boundaries():
    from simdex.jobs.dicomweb import multipart_parts

    a, b = b"\x00\r\n--not-the-boundary\r\n\r\n", b"DICM" + bytes(range(256))
    body = (b"preamble\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + a +
            b"\r\n--XyZ \r\n\r\n" + b + b"\r\n--XyZ--\r\nepilogue")
    assert multipart_parts('multipart/related; type="application/dicom"; boundary="XyZ"', body) == [a, b]
    with pytest.raises(ValueError, match="expected multipart/related"):
        multipart_parts("application/json", body)
