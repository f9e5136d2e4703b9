"""The lookup web page in a real headless chromium (PyPI playwright driving Debian's /usr/bin/chromium) against a
real uvicorn and a real simdex gRPC server: upload a file and see the studies, follow a study's viewer link, a
script in a tag and in an id never runs, no PHI in the page, and (with Orthanc) a StudyInstanceUID query whose
thumbnails the PACS rendered. The screenshots are kept in test-artifacts/web.png and web-pacs.png."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import InProcessServer
from webworld import EVIL_ID, MARKUP, PHI, SCRIPT, VIEWER, UvicornThread, build, study_uid

from simdex.clients import Client

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        why = "chromium is not installed (Debian: apt-get install chromium, or `make browser`)"
        if os.environ.get("SIMDEX_REQUIRE_BROWSER") == "1":  # CI: `make test` installs it, so absence is a failure
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("webui")
    srv = InProcessServer(base / "srv")
    client = Client(srv.target)
    w = build(base / "root", client)
    yield w, client
    client.close()
    srv.stop()


@pytest.fixture(scope="module")
def site(world):
    from simdex.web.app import create_app

    w, client = world
    srv = UvicornThread(create_app(client, viewer_url=VIEWER, root=w.root))
    yield srv.url
    srv.stop()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    # the viewer is another site; answer its navigation here (nothing leaves the machine)
    ctx.route("http://viewer.example/**", lambda route: route.fulfill(status=200, body="viewer",
                                                                      content_type="text/plain"))
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    ctx.close()


def _until(page, js: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll the page until `js` is true (wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        page.wait_for_timeout(50)


def _open(page, url: str) -> None:
    page.goto(url)
    _until(page, "document.querySelectorAll('#collection option').length > 0")
    page.select_option("#collection", "cosine")


def _upload(page, data: bytes, name="query.dcm", mime="application/dicom") -> None:
    page.fill("#k", "20")
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.wait_for_selector("body[data-state=done]")
    _wait_images(page)


def _wait_images(page) -> None:
    """Until every thumbnail has loaded or been replaced by its placeholder."""
    page.evaluate("() => Array.from(document.querySelectorAll('.thumb img')).forEach(i => i.loading = 'eager')")
    _until(page, "Array.from(document.querySelectorAll('.thumb img')).every(i => i.complete)")


def _loaded(page) -> int:
    return page.evaluate("Array.from(document.querySelectorAll('.thumb img')).filter(i => i.naturalWidth > 0).length")


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    return shot


def test_upload_shows_the_similar_studies(world, site, page):
    from PIL import Image

    w, _ = world
    _open(page, site)
    _upload(page, w.query)
    studies = page.locator("section.study")
    assert studies.count() == 5  # A, B, C and the two PNGs without a study
    assert study_uid("A") in studies.nth(0).locator("h2").inner_text()
    assert page.locator("#results").get_attribute("data-hits") == str(len(w.files))
    first = studies.nth(0).locator("figure.hit").nth(0)
    assert first.locator(".id").inner_text() == w.query_id and first.locator(".score").inner_text() == "1.0000"
    assert _loaded(page) == len(w.files) - 1  # every thumbnail but the one whose file is absent
    assert page.locator(".missing").count() == 1
    assert page.locator("#facts").inner_text().count("CT") >= 1
    shot = _shot(page, "web.png")
    im = Image.open(shot)
    assert im.format == "PNG" and im.size[0] == 1280 and im.size[1] > 1000


def test_the_viewer_link_opens_the_study(world, site, page):
    _open(page, site)
    _upload(page, world[0].query)
    link = page.locator("section.study").nth(0).locator("a.viewer")
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    with page.context.expect_page() as new:
        link.click()
    viewer = new.value
    viewer.wait_for_load_state()
    assert viewer.url == VIEWER.replace("{study}", quote(study_uid("A"), safe=""))
    assert page.locator("section.study").nth(3).locator("a.viewer").count() == 0  # no study UID, no link


def test_scripts_in_tags_and_ids_never_run(world, site, page):
    _open(page, site)
    _upload(page, world[0].query)
    assert page.evaluate("window.__pwned") is None
    assert SCRIPT in page.locator("#facts").inner_text()  # Manufacturer of the query, shown as text
    assert page.locator("#facts img, section.study img:not(.thumb img), .id img").count() == 0
    assert page.locator(".id", has_text=EVIL_ID).count() == 1  # the id, as text
    body_parts = page.locator(".body-part").all_inner_texts()
    assert MARKUP in body_parts and page.locator(".study-head b").count() == 0  # markup shown, not applied
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.evaluate("window.__pwned") is None


def test_no_identifying_value_in_the_page(world, site, page):
    _open(page, site)
    _upload(page, world[0].query)
    html, text = page.content(), page.inner_text("body")
    for value in PHI.values():
        assert value.encode() in world[0].query
        assert value not in html and value not in text, value


def test_a_png_upload_is_previewed_and_searched(world, site, page):
    w, _ = world
    _open(page, site)
    _upload(page, w.files["png/p0.png"], "p0.png", "image/png")
    assert page.locator("section.study").nth(0).locator(".id").nth(0).inner_text() == "png/p0.png"
    assert page.evaluate("document.querySelector('#preview img').naturalWidth") == 64


def test_a_file_over_the_limit_is_refused_before_it_is_sent(world, page):
    from simdex.web.app import create_app

    w, client = world
    srv = UvicornThread(create_app(client, max_upload_mb=0.01))
    try:
        _open(page, srv.url)
        page.set_input_files("#file", files=[{"name": "q.dcm", "mimeType": "application/dicom", "buffer": w.query}])
        page.wait_for_selector("body[data-state=error]")
        assert "larger than this page's upload limit" in page.inner_text("#status")
    finally:
        srv.stop()


def test_a_study_uid_query_shows_pacs_thumbnails(world, orthanc, browser, page, tmp_path):
    import pydicom

    from simdex.jobs.dicomweb import PacsAuth
    from simdex.web.app import create_app
    from simdex.web.pacs import StudyPacs

    w, client = world
    pacs = orthanc("basic")
    pacs.client().store_instances([pydicom.dcmread(io.BytesIO(d)) for i, d in w.files.items() if i.endswith(".dcm")])
    auth = PacsAuth(user="simdex", password=pacs.password)
    srv = UvicornThread(create_app(client, pacs=StudyPacs(pacs.source, auth), viewer_url=VIEWER, root=tmp_path))
    try:
        _open(page, srv.url)
        assert page.is_visible("#study")
        page.fill("#k", "4")
        page.fill("#study", study_uid("B"))
        page.click("#search")
        page.wait_for_selector("body[data-state=done]")
        _wait_images(page)
        assert study_uid("B") in page.locator("section.study").nth(0).locator("h2").inner_text()
        assert _loaded(page) == 4  # no file root: each of them rendered by the PACS
        assert sum(line.endswith("/rendered") for line in pacs.requests()) == 4
        _shot(page, "web-pacs.png")
    finally:
        srv.stop()
