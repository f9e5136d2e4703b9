"""The web page's JSON API (simdex.web.app) over a real simdex gRPC server: the response's shape, grouping by study
and series, scores per metric against an exact NumPy oracle, thumbnails, 413 while reading (declared and streamed
bodies), clear errors, no PHI in any answer, and the page's security headers and script hygiene."""
from __future__ import annotations

import json
import re
import select
import socket
import time
from importlib import resources
from urllib.parse import quote

import numpy as np
import pytest
from conftest import InProcessServer
from webworld import EMB, EVIL_ID, METRICS, PHI, SCRIPT, VIEWER, UvicornThread, build, series_uid, study_uid

from simdex.clients import Client
from simdex.embedder.dicom import SAFE_TAGS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    srv = InProcessServer(base / "srv")
    client = Client(srv.target)
    w = build(base / "root", client)
    w.target = srv.target
    yield w, client
    client.close()
    srv.stop()


@pytest.fixture(scope="module")
def api(world):
    from fastapi.testclient import TestClient

    from simdex.web.app import create_app

    w, client = world
    with TestClient(create_app(client, viewer_url=VIEWER, root=w.root)) as tc:
        yield tc


def _similar(api, query: bytes, collection="cosine", k=20, name="q.dcm"):
    return api.post("/api/similar", files={"file": (name, query, "application/dicom")},
                    data={"collection": collection, "k": str(k)})


@pytest.fixture(scope="module")
def doc(world, api):
    r = _similar(api, world[0].query)
    assert r.status_code == 200, r.text
    return r.json()


def _hits(doc):
    return [(st, se, h) for st in doc["studies"] for se in st["series"] for h in se["hits"]]


# ---- the answer ---------------------------------------------------------------------------------------------------
def test_collections_lists_the_image_collections(world, api):
    r = api.get("/api/collections")
    doc = r.json()
    assert r.status_code == 200 and {c["name"] for c in doc["collections"]} == set(METRICS)  # not 'plain'
    assert all(c["embedder"] == EMB and c["count"] == len(world[0].files) for c in doc["collections"])
    assert doc["pacs"] is False and doc["max_upload_bytes"] == 64 << 20


def test_similar_has_the_contracts_shape(doc):
    assert set(doc) == {"query", "metric", "studies"}
    assert doc["metric"] == {"name": "cosine", "score": "cosine similarity, higher is closer",
                             "higher_is_closer": True}
    for st, se, h in _hits(doc):
        assert set(st) == {"study_uid", "score", "modality", "body_part", "series", "viewer_url"}
        assert set(se) == {"series_uid", "hits"} and set(h) == {"id", "score", "thumbnail_url"}
    assert set(doc["query"]) <= set(SAFE_TAGS)
    assert doc["query"]["Modality"] == "CT" and doc["query"]["StudyInstanceUID"] == study_uid("A")
    assert doc["query"]["Manufacturer"] == SCRIPT  # data, unescaped in JSON; the page escapes it


def test_hits_are_grouped_by_study_then_series_best_first(world, doc):
    w, client = world
    stored = {it.id: it.metadata for it in client.get("cosine", list(w.files), with_vectors=False)}
    hits = _hits(doc)
    assert sorted(h["id"] for _, _, h in hits) == sorted(w.files)  # k >= size: every item exactly once
    for st, se, h in hits:
        assert st["study_uid"] == stored[h["id"]].get("StudyInstanceUID")
        assert se["series_uid"] == stored[h["id"]].get("SeriesInstanceUID")
    first = doc["studies"][0]
    assert first["study_uid"] == study_uid("A") and first["series"][0]["hits"][0]["id"] == w.query_id
    assert first["series"][0]["series_uid"] == series_uid("A", 1) and len(first["series"]) == 2
    for st in doc["studies"]:
        scores = [h["score"] for se in st["series"] for h in se["hits"]]
        assert st["score"] == max(scores)  # a study's score is its best hit's
        assert [se["hits"][0]["score"] for se in st["series"]] == sorted(
            [se["hits"][0]["score"] for se in st["series"]], reverse=True)
    assert [st["score"] for st in doc["studies"]] == sorted((st["score"] for st in doc["studies"]), reverse=True)
    by_uid = {st["study_uid"]: st for st in doc["studies"]}
    assert set(by_uid) == {study_uid("A"), study_uid("B"), study_uid("C"), None}
    assert (by_uid[study_uid("B")]["modality"], by_uid[study_uid("B")]["body_part"]) == ("MR", "HEAD")
    lone = [st for st in doc["studies"] if st["study_uid"] is None]
    assert len(lone) == 2 and all(st["viewer_url"] is None and st["modality"] is None for st in lone)


def test_viewer_url_substitutes_the_encoded_study_uid(doc):
    from simdex.web.results import viewer_link

    a = next(st for st in doc["studies"] if st["study_uid"] == study_uid("A"))
    assert a["viewer_url"] == VIEWER.replace("{study}", study_uid("A"))
    assert viewer_link("http://v/?s={study}", "1.2&x=<y>#") == "http://v/?s=" + quote("1.2&x=<y>#", safe="")
    assert viewer_link("http://v/?s={study}", "1.2&x=<y>#").endswith("1.2%26x%3D%3Cy%3E%23")


@pytest.mark.parametrize("metric", METRICS)
def test_scores_are_the_collections_own_against_an_exact_oracle(world, api, metric):
    w, client = world
    ids = list(w.files)
    xb = client.embed(EMB, images=list(w.files.values())).astype(np.float64)
    xq = client.embed(EMB, images=[w.query]).astype(np.float64)[0]
    if metric == "cosine":
        s = (xb / np.linalg.norm(xb, axis=1, keepdims=True)) @ (xq / np.linalg.norm(xq))
    elif metric == "ip":
        s = xb @ xq
    else:
        s = ((xb - xq) ** 2).sum(1)
    r = _similar(api, w.query, metric, k=5)
    doc = r.json()
    assert r.status_code == 200 and doc["metric"]["name"] == metric
    assert doc["metric"]["higher_is_closer"] is (metric != "l2")
    got = sorted(((h["score"], h["id"]) for _, _, h in _hits(doc)), reverse=metric != "l2")
    order = np.argsort(-s if metric != "l2" else s, kind="stable")[:5]
    np.testing.assert_allclose([g[0] for g in got], s[order], rtol=1e-4, atol=1e-4)
    assert {g[1] for g in got} == {ids[i] for i in order}
    assert metric == "ip" or got[0][1] == w.query_id  # inner product favours large norms, not the same image


def test_thumbnails_are_pngs_of_the_stored_files(world, api, doc):
    import io

    from PIL import Image

    from simdex.lookup.grouping import thumbnail_of

    w, _ = world
    urls = {h["id"]: h["thumbnail_url"] for _, _, h in _hits(doc)}
    r = api.get(urls[w.query_id])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    want = thumbnail_of(w.files[w.query_id], "x")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), np.asarray(Image.open(io.BytesIO(want))))
    missing = api.get(urls[EVIL_ID])  # its file is absent
    assert missing.status_code == 404 and "file not found" in missing.json()["detail"]
    assert api.get("/api/thumbnail", params={"collection": "cosine", "id": "nope"}).status_code == 404


def test_no_identifying_value_in_any_answer(world, api, doc):
    w, _ = world
    texts = [json.dumps(doc), api.get("/api/collections").text]
    texts += [api.get(h["thumbnail_url"]).text for _, _, h in _hits(doc)[:3]]
    for value in PHI.values():
        assert value.encode() in w.query
        assert all(value not in t for t in texts), value
    assert not set(doc["query"]) & set(PHI)


# ---- limits and errors --------------------------------------------------------------------------------------------
def test_upload_over_the_limit_is_413(world):
    from fastapi.testclient import TestClient

    from simdex.web.app import create_app

    w, client = world
    limit = 0.01  # MiB: 10,485 bytes, less than the query
    with TestClient(create_app(client, max_upload_mb=limit)) as tc:
        r = _similar(tc, w.query)
        assert r.status_code == 413 and "10,485 bytes" in r.json()["detail"]
        small = tc.post("/api/similar", files={"file": ("p.png", w.files["png/p0.png"], "image/png")},
                        data={"collection": "cosine", "k": "3"})
        assert small.status_code == 200


def test_a_streamed_upload_is_refused_while_it_is_read(world):
    """A chunked body (no Content-Length) over the limit is answered 413 long before the client has sent it all."""
    from simdex.web.app import create_app

    w, client = world
    srv = UvicornThread(create_app(client, max_upload_mb=0.25))  # 262,144 bytes + the form's slack
    port = int(srv.url.rsplit(":", 1)[1])
    total, chunk = 64 << 20, b"x" * (16 << 10)
    head = (b"POST /api/similar HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=BOUND\r\n\r\n")
    start = b'--BOUND\r\nContent-Disposition: form-data; name="file"; filename="q.dcm"\r\n\r\n'
    sent, answer = 0, b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + b"%x\r\n%s\r\n" % (len(start), start))
            deadline = time.monotonic() + 30
            while sent < total and time.monotonic() < deadline:
                if select.select([s], [], [], 0)[0]:
                    break
                try:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
            s.settimeout(10)
            answer = s.recv(65536)
    finally:
        srv.stop()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 4 << 20  # it stopped reading near the limit, not at the end of the 64 MiB body


@pytest.mark.parametrize("fields, status, message", [
    ({"collection": "cosine", "k": "0"}, 400, "'k' must be a whole number from 1 to 500"),
    ({"collection": "cosine", "k": "1e3"}, 400, "'k' must be"),
    ({"k": "3"}, 400, "'collection' is missing"),
    ({"collection": "nope", "k": "3"}, 404, "nope"),
    ({"collection": "plain", "k": "3"}, 400, "'plain' has no embedder"),
])
def test_bad_fields_are_refused_with_a_clear_message(world, api, fields, status, message):
    r = api.post("/api/similar", files={"file": ("q.dcm", world[0].query, "application/dicom")}, data=fields)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_bad_queries_are_refused_with_a_clear_message(api):
    r = api.post("/api/similar", files={"file": ("q.bin", b"not an image", "application/octet-stream")},
                 data={"collection": "cosine", "k": "3"})
    assert r.status_code == 400 and r.json()["detail"].startswith("the uploaded file") and r.json()["code"] == \
        "INVALID_ARGUMENT"
    r = api.post("/api/similar", data={"collection": "cosine", "k": "3"}, files={"other": ("x", b"1")})
    assert r.status_code == 400 and "'file' is missing" in r.json()["detail"]
    r = api.post("/api/similar", json={"study_uid": "1.2.3", "collection": "cosine", "k": 3})
    assert r.status_code == 400 and "has no PACS" in r.json()["detail"]
    r = api.post("/api/similar", json=["1.2.3"])
    assert r.status_code == 400 and "expected an object" in r.json()["detail"]
    r = api.post("/api/similar", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_healthz_follows_the_simdex_server(api):
    from fastapi.testclient import TestClient

    from simdex.web.app import create_app

    assert api.get("/healthz").json() == {"status": "ok"}
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with Client(f"127.0.0.1:{dead}") as c, TestClient(create_app(c)) as tc:
        r = tc.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"


def test_viewer_url_template_is_checked():
    from simdex.web.app import check_viewer_url

    for bad in ("javascript:alert(1)//{study}", "http://viewer/no-placeholder", "ftp://x/{study}"):
        with pytest.raises(ValueError, match="--viewer-url"):
            check_viewer_url(bad)
    assert check_viewer_url(VIEWER) == VIEWER


# ---- the page's headers and script ----------------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(api, doc):
    for path in ("/", "/app.js", "/app.css", "/api/collections", "/healthz", doc["studies"][0]["series"][0]["hits"][0]
                 ["thumbnail_url"], "/api/thumbnail?collection=cosine&id=nope", "/nothing-here"):
        r = api.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert api.get("/").headers["content-type"].startswith("text/html")


def test_page_has_no_inline_script_or_style_and_the_script_never_parses_html():
    static = resources.files("simdex.web") / "static"
    page = (static / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="app.js" defer>'] and "<style" not in page
    assert not re.search(r"<[^>]*\s(style|on\w+)=", page)  # no inline style or event handler
    assert not re.search(r"https?://", page)
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


# ---- with a real PACS (Orthanc) -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pacs_api(world, orthanc, tmp_path_factory):
    """The app over the same server with a token-protected Orthanc holding the world's DICOM files, and no file
    root (item paths resolve nowhere), so every thumbnail must come from the PACS."""
    import io

    import pydicom
    from fastapi.testclient import TestClient

    from simdex.jobs.dicomweb import PacsAuth
    from simdex.web.app import create_app
    from simdex.web.pacs import StudyPacs

    w, client = world
    pacs = orthanc("token")
    pacs.client().store_instances([pydicom.dcmread(io.BytesIO(d)) for i, d in w.files.items() if i.endswith(".dcm")])
    app = create_app(client, pacs=StudyPacs(pacs.source, PacsAuth(token=pacs.token)), viewer_url=VIEWER,
                     root=tmp_path_factory.mktemp("empty"))
    with TestClient(app) as tc:
        yield tc, pacs


def test_a_study_uid_is_queried_by_its_middle_instance(world, pacs_api):
    api, pacs = pacs_api
    r = api.post("/api/similar", json={"study_uid": study_uid("B"), "collection": "cosine", "k": 4})
    doc = r.json()
    assert r.status_code == 200, r.text
    assert doc["query"]["StudyInstanceUID"] == study_uid("B") and doc["query"]["InstanceNumber"] == 2
    assert doc["query"]["SOPInstanceUID"] == f"{series_uid('B', 1)}.2" and doc["query"]["Modality"] == "MR"
    first = doc["studies"][0]
    assert first["study_uid"] == study_uid("B") and first["series"][0]["hits"][0]["id"] == "dcm/B1-1.dcm"
    assert first["series"][0]["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert f"{series_uid('B', 1)}.2" in pacs.wado_instance_requests()
    text = json.dumps(doc)
    assert all(value not in text for value in PHI.values())


def test_thumbnails_come_from_the_pacs_rendering(world, pacs_api):
    import io

    from PIL import Image

    api, pacs = pacs_api
    doc = api.post("/api/similar", json={"study_uid": study_uid("A"), "collection": "cosine", "k": 3}).json()
    hit = doc["studies"][0]["series"][0]["hits"][0]
    before = len(pacs.requests())
    r = api.get(hit["thumbnail_url"])
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "PNG"
    sop = world[1].get("cosine", [hit["id"]], with_vectors=False)[0].metadata["SOPInstanceUID"]
    rendered = [line for line in pacs.requests()[before:] if line.endswith("/rendered")]
    assert len(rendered) == 1 and f"/instances/{sop}/rendered" in rendered[0]
    assert api.get(hit["thumbnail_url"]).content == r.content and len(pacs.requests()) == before + 1  # cached


def test_unknown_or_malformed_study_uids_are_refused(pacs_api):
    api, _ = pacs_api
    r = api.post("/api/similar", json={"study_uid": "1.2.3.4", "collection": "cosine", "k": 3})
    assert r.status_code == 404 and "study 1.2.3.4 has no instance in the PACS" in r.json()["detail"]
    r = api.post("/api/similar", json={"study_uid": "1.2.<x>", "collection": "cosine", "k": 3})
    assert r.status_code == 400 and "is not a DICOM UID" in r.json()["detail"]


# ---- the command --------------------------------------------------------------------------------------------------
def test_simdex_web_serves_the_page_over_a_server(world, tmp_path):
    """`simdex web` as a real process: it answers on loopback, lists the server's collections, and stops on
    SIGTERM."""
    import subprocess
    import sys

    import httpx
    from proc import free_port, server_env

    port = free_port()
    log = tmp_path / "web.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "simdex.cli.main", "web", "--target", world[0].target, "--port",
                                 str(port), "--viewer-url", VIEWER], stdout=fh, stderr=subprocess.STDOUT,
                                env=server_env())
    try:
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/collections", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r is not None and r.status_code == 200, log.read_text()
        assert {c["name"] for c in r.json()["collections"]} == set(METRICS)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_simdex_web_refuses_bad_flags(capsys):
    from simdex.cli.main import main

    with pytest.raises(SystemExit, match="need --pacs"):
        main(["web", "--pacs-user", "u"])
    with pytest.raises(SystemExit, match="--viewer-url"):
        main(["web", "--target", "127.0.0.1:1", "--viewer-url", "javascript:x{study}"])
