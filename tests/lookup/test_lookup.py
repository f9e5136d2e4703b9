"""`simdex lookup`: a query DICOM/image -> neighbours grouped by study and series, as JSON and a self-contained HTML
page; privacy (no identifying tag of the query reaches either), escaping, missing files, the CLI, and the page in a
real browser (headless chromium: screenshot kept in test-artifacts/lookup.png, every thumbnail loaded)."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simdex.clients import Client, FailedPrecondition, InvalidArgument
from simdex.lookup import grouping
from simdex.lookup import page as lk

EMB = "densenet-bc-random"  # small (32x32 input), random weights: fast, nothing to download
DICOMS = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "examples_overlay.dcm", "JPEG2000.dcm")
# Identifying values written into the query's header; none may appear in the page or the JSON.
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-12345", "PatientBirthDate": "19710203",
       "InstitutionName": "Saint Example Hospital", "ReferringPhysicianName": "Smith^John",
       "AccessionNumber": "ACC-998877", "StudyDescription": "Jane follow-up"}
EVIL_ID = '<script>alert("x")</script>&id'
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(seed: int, size=(48, 64)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size[::-1], Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _phi_query(src: Path) -> bytes:
    """`src` with identifying tags added (a query as a PACS would export it)."""
    import pydicom

    ds = pydicom.dcmread(src)
    for tag, value in PHI.items():
        setattr(ds, tag, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data directory with collection 'scans' (DICOM and PNG items with `path` metadata, one file deleted, one item
    without a path, one hostile id), its file root, and the PHI-laden query."""
    import pydicom.data

    base = tmp_path_factory.mktemp("lookup")
    root, data = base / "root", base / "data"
    folder = Path(pydicom.data.__file__).parent / "test_files"
    (root / "dcm").mkdir(parents=True)
    (root / "png").mkdir()
    for n in DICOMS:
        shutil.copy(folder / n, root / "dcm" / n)
    for i in range(3):
        (root / "png" / f"p{i}.png").write_bytes(_png(i))
    files = sorted(root.rglob("*.*"))
    ids = [f.stem for f in files] + ["gone", "no-path", EVIL_ID]
    metas = [{"path": f.relative_to(root).as_posix()} for f in files] + [
        {"path": "png/gone.png"}, {"note": "indexed without a path"},
        {"path": "png/p1.png", "Modality": "<b>MR</b>", "StudyInstanceUID": "1.2.<i>3</i>"}]
    blobs = [f.read_bytes() for f in files] + [_png(3), _png(4), _png(5)]
    with Client.local(str(data), snapshot_interval=0) as c:
        c.create_collection("scans", 0, metric="cosine", embedder=EMB)
        c.upsert("scans", ids, images=blobs, metadata=metas)
        c.create_collection("plain", 4)
    return {"root": root, "data": data, "query": _phi_query(folder / "CT_small.dcm"), "n": len(ids)}


@pytest.fixture(scope="module")
def client(world):
    c = Client.local(str(world["data"]), snapshot_interval=0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def result(world, client):
    """The lookup of the PHI query over every item (k = collection size)."""
    return lk.lookup(client, "scans", world["query"], k=world["n"], root=world["root"], query_name="query.dcm")


@pytest.fixture(scope="module")
def page(result) -> str:
    return lk.render_html(result)


def _imgs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


# ---- the result ---------------------------------------------------------------------------------------------------
def test_hits_are_the_servers_search_results(world, client, result):
    from simdex.embedder.decode import decode_image

    r = client.search("scans", images=[world["query"]], k=5, include_metadata=True)
    assert [h.id for h in result.hits[:5]] == r.ids[0]
    np.testing.assert_allclose([h.distance for h in result.hits[:5]], r.distances[0], rtol=1e-6)
    assert [h.metadata for h in result.hits[:5]] == r.metadata[0]
    assert [h.rank for h in result.hits] == list(range(1, world["n"] + 1))
    assert result.query_metadata == decode_image(world["query"])[0].metadata
    assert result.metric == "cosine" and result.embedder == EMB


def test_hits_are_grouped_by_study_then_series(result):
    placed = [h for st in result.studies for se in st.series for h in se.hits] + result.ungrouped
    assert sorted(h.rank for h in placed) == [h.rank for h in result.hits]  # each hit exactly once
    for st in result.studies:
        for se in st.series:
            assert all(h.study == st.uid and h.series == se.uid for h in se.hits)
            assert [h.rank for h in se.hits] == sorted(h.rank for h in se.hits)
        best = [se.hits[0].rank for se in st.series]
        assert best == sorted(best) and len({se.uid for se in st.series}) == len(st.series)
    assert [st.hits[0].rank for st in result.studies] == sorted(min(h.rank for h in st.hits) for st in result.studies)
    assert len({st.uid for st in result.studies}) == len(result.studies)
    assert all(h.study is None for h in result.ungrouped)
    # the data exercises every case: several studies, a series of several hits, ungrouped hits
    assert len(result.studies) >= 4 and max(len(se.hits) for st in result.studies for se in st.series) >= 2
    assert {"p0", "p1", "gone"} <= {h.id for h in result.ungrouped}


def test_group_hits_handles_missing_and_odd_uids():
    def hit(rank, **meta):
        return grouping.Hit(rank, f"h{rank}", 0.0, meta)

    hits = [hit(3, StudyInstanceUID="A", SeriesInstanceUID="s1"), hit(1, StudyInstanceUID="B"),
            hit(2, StudyInstanceUID="A", SeriesInstanceUID="s2"), hit(4, StudyInstanceUID="  "),
            hit(5, StudyInstanceUID=7, SeriesInstanceUID="s1"), hit(6, StudyInstanceUID="A", SeriesInstanceUID="s1")]
    studies, ungrouped = grouping.group_hits(hits)
    got = [(st.uid, [(se.uid, [h.rank for h in se.hits]) for se in st.series]) for st in studies]
    assert got == [("B", [(None, [1])]), ("A", [("s2", [2]), ("s1", [3, 6])])]
    assert [h.rank for h in ungrouped] == [4, 5]  # blank and non-string UIDs do not group


def test_thumbnails_are_the_windowed_decodes_of_the_files(world, result):
    from PIL import Image

    from simdex.embedder.decode import decode_image, thumbnail_png

    by_id = {h.id: h for h in result.hits}
    for id_, rel in (("CT_small", "dcm/CT_small.dcm"), ("examples_overlay", "dcm/examples_overlay.dcm"),
                     ("p2", "png/p2.png")):
        want = thumbnail_png(decode_image((world["root"] / rel).read_bytes())[0].rgb, grouping.HIT_SIDE)
        got = by_id[id_].thumbnail
        assert got is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(got))),
                                                  np.asarray(Image.open(io.BytesIO(want))))


def test_missing_files_are_placeholders_and_listed(result, page):
    missing = {m["id"]: m for m in result.to_json()["missing"]}
    assert set(missing) == {"gone", "no-path"}
    assert missing["gone"]["path"] == "png/gone.png" and missing["gone"]["reason"].startswith("file not found")
    assert missing["no-path"]["path"] is None and "no 'path'" in missing["no-path"]["reason"]
    assert page.count('<div class="missing"') == 2 and "png/gone.png" in page
    assert len(_imgs(page)) == 1 + len(result.hits) - 2  # the query, and each neighbour that has a file


def test_paths_resolve_against_the_working_directory_or_absolutely(world, client, monkeypatch, tmp_path):
    monkeypatch.chdir(world["root"])
    r = lk.lookup(client, "scans", _png(0), k=world["n"])
    assert {h.id for h in r.missing} == {"gone", "no-path"}
    monkeypatch.chdir(tmp_path)  # relative paths now point nowhere; an absolute one still works
    th = grouping.Thumbnails()
    assert th.get({"path": "png/p0.png"})[0] is None
    png, problem = th.get({"path": str(world["root"] / "png" / "p0.png")})
    assert png is not None and problem == ""


def test_frame_metadata_picks_that_frame_of_a_multi_frame_file():
    import pydicom.data
    from PIL import Image

    from simdex.embedder.decode import decode_image, thumbnail_png

    path = Path(pydicom.data.__file__).parent / "test_files" / "SC_rgb_rle_2frame.dcm"
    frames = decode_image(path.read_bytes(), all_frames=True)
    th = grouping.Thumbnails()
    for f in frames:
        got, problem = th.get({"path": str(path), "frame": f.frame})
        want = thumbnail_png(f.rgb, grouping.HIT_SIDE)
        assert problem == "" and np.array_equal(np.asarray(Image.open(io.BytesIO(got))),
                                                np.asarray(Image.open(io.BytesIO(want))))
    assert th.get({"path": str(path), "frame": 0})[0] != th.get({"path": str(path), "frame": 1})[0]
    assert th.get({"path": str(path), "frame": 5}) == (None, f"{path} has no frame 5")


def test_bad_arguments_are_refused(world, client):
    with pytest.raises(InvalidArgument, match="k must be"):
        lk.lookup(client, "scans", world["query"], k=0)
    with pytest.raises(InvalidArgument, match="query.bin"):
        lk.lookup(client, "scans", b"not an image", query_name="query.bin")
    with pytest.raises(FailedPrecondition, match="'plain' has no embedder"):
        lk.lookup(client, "plain", world["query"])


# ---- privacy, escaping, self-containment ------------------------------------------------------------------------
def test_no_identifying_value_reaches_the_page_or_the_json(world, result, page):
    text = json.dumps(result.to_json(), ensure_ascii=False)
    for value in PHI.values():
        assert value.encode() in world["query"]  # the query really carries it
        assert value not in page and value not in text, value
    assert "CT_small" in page and result.query_metadata["Modality"] == "CT"  # the safe facts are there


def test_user_text_is_escaped(page):
    assert EVIL_ID not in page and "<b>MR</b>" not in page and "<i>3" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;id" in page
    assert "&lt;b&gt;MR&lt;/b&gt;" in page and "1.2.&lt;i&gt;3&lt;/i&gt;" in page


def test_page_is_self_contained(page):
    from PIL import Image

    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    text = re.sub(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]*"', "", page).replace("http-equiv", "")
    assert not re.search(r"url\(|https?:|//[a-z]|\bsrc=|\bhref=", text)  # no source other than data: images
    assert 'http-equiv="Content-Security-Policy"' in page and "img-src data:" in page
    srcs = _imgs(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).format == "PNG"


def test_json_is_strict_and_names_the_score(result):
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert doc["score"] == "cosine similarity, higher is closer" and doc["higher_is_closer"] is True
    hit = next(h for h in doc["hits"] if h["id"] == "MR_small")
    assert hit["group"] == {"study": hit["metadata"]["StudyInstanceUID"],
                            "series": hit["metadata"]["SeriesInstanceUID"]}
    grouped = [i for g in doc["groups"] for i in g["ids"]]
    assert sorted(grouped) == sorted(h["id"] for h in doc["hits"])


# ---- the command line ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli_main():
    from simdex.cli.main import main

    return main


def test_cli_over_grpc_writes_the_page_and_prints_json(world, client, cli_main, tmp_path, capsys):
    from simdex.server.app import create_server

    # the module's data, served over gRPC by the in-process client's own service (one service per data
    # directory: a second one on the same SQLite file is refused)
    server, port, _ = create_server(client._transport.service, "127.0.0.1:0")
    server.start()
    q, out = tmp_path / "query.dcm", tmp_path / "out.html"
    q.write_bytes(world["query"])
    try:
        rc = cli_main(["lookup", str(q), "--collection", "scans", "-k", "4", "--target", f"127.0.0.1:{port}",
                       "--root", str(world["root"]), "--html", str(out), "--json"])
    finally:
        server.stop(grace=None).wait()
    cap = capsys.readouterr()
    assert rc == 0
    doc = json.loads(cap.out)
    direct = lk.lookup(client, "scans", world["query"], k=4, root=world["root"], query_name="query.dcm")
    assert doc == {**json.loads(json.dumps(direct.to_json())), "html": str(out)}  # both transports agree
    page = out.read_text(encoding="utf-8")
    for value in PHI.values():
        assert value not in cap.out and value not in page
    assert all(h["id"] in page for h in doc["hits"] if "<" not in h["id"])


def test_cli_in_process_prints_a_table(cli_main, tmp_path, capsys):
    data, root = tmp_path / "data", tmp_path / "root"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.png").write_bytes(_png(i))
    with Client.local(str(data), snapshot_interval=0) as c:
        c.create_collection("pics", 0, metric="l2", embedder=EMB)
        c.upsert("pics", ["p0", "p1", "p2"], images=[_png(i) for i in range(3)],
                 metadata=[{"path": f"p{i}.png"} for i in range(3)])
    rc = cli_main(["lookup", str(root / "p1.png"), "--collection", "pics", "-k", "2", "--data", str(data),
                   "--root", str(root)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and "squared L2 distance, lower is closer" in out[0]
    assert out[1].split()[:2] == ["1", "0.0000"] and out[1].split()[2] == "p1" and len(out) == 3


# ---- a real browser -----------------------------------------------------------------------------------------------
def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM:
        why = "chromium is not installed (Debian: apt-get install chromium); the page is untested in a browser"
        if os.environ.get("SIMDEX_REQUIRE_BROWSER") == "1":  # CI: `make test` installs it, so absence is a failure
            pytest.fail(why)
        pytest.skip(why)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _with_script(page: str, script: str, keep_csp: bool) -> str:
    if not keep_csp:
        page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    return page.replace("</body>", f"<script>{script}</script></body>")


# Counts the images that loaded AND decoded whole: drawn on a canvas, every pixel is opaque (the thumbnails are RGB
# PNGs; a truncated or corrupt one still reports its size from the header but leaves pixels transparent).
_COUNT_LOADED = """window.addEventListener('load', function () {
  var im = document.images, ok = 0;
  for (var i = 0; i < im.length; i++) {
    var m = im[i];
    if (!(m.complete && m.naturalWidth > 0)) continue;
    var c = document.createElement('canvas'), g = c.getContext('2d'), whole = true;
    c.width = m.naturalWidth; c.height = m.naturalHeight; g.drawImage(m, 0, 0);
    var d = g.getImageData(0, 0, c.width, c.height).data;
    for (var j = 3; j < d.length; j += 4) if (d[j] !== 255) { whole = false; break; }
    if (whole) ok++;
  }
  document.title = 'loaded ' + ok + ' of ' + im.length;
});"""


def test_browser_screenshot_is_a_real_picture(page, tmp_path):
    from PIL import Image

    html = tmp_path / "lookup.html"
    html.write_text(page, encoding="utf-8")
    shot = REPO / "test-artifacts" / "lookup.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", html.as_uri())
    im = Image.open(shot)
    assert im.format == "PNG" and im.size == (1280, 2000)
    a = np.asarray(im.convert("RGB")).astype(np.int16)
    assert a.std() > 20 and len(np.unique(a.reshape(-1, 3), axis=0)) > 1000  # thumbnails and text, not blank
    # the page background is light and flat; where the layout puts the query's thumbnail (top left) is an image
    box = a[100:300, 80:330]
    assert a[2:8, 600:680].mean() > 200 and a[2:8, 600:680].std() < 3 and box.mean() < 200 and box.std() > 20


def test_browser_loads_every_thumbnail(page, result, tmp_path):
    html = tmp_path / "probe.html"
    html.write_text(_with_script(page, _COUNT_LOADED, keep_csp=False), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", html.as_uri()).stdout
    n = 1 + sum(h.thumbnail is not None for h in result.hits)
    title = re.search(r"<title>([^<]*)</title>", dom)
    assert title and title.group(1) == f"loaded {n} of {n}"


def test_browser_runs_no_script_in_the_page(page, tmp_path):
    html = tmp_path / "csp.html"  # the page's own policy must stop even an injected script
    html.write_text(_with_script(page, _COUNT_LOADED, keep_csp=True), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", html.as_uri()).stdout
    assert "<title>simdex lookup: query.dcm</title>" in dom and "<title>loaded" not in dom
