"""The lookup web page, upload to rendered results: p50/p95 over a collection of N stored DICOM instances.

A real simdex gRPC server (in this process, port 0), `simdex web`'s app under a real uvicorn, and headless chromium
(playwright driving /usr/bin/chromium). Each query is a different stored instance carrying identifying tags, so the
search is real and its thumbnails are mostly fresh (the app caches thumbnails it made). The browser measures, on
its own clock, from setInputFiles to the studies rendered (the page's results in the DOM) and to every thumbnail
of them loaded; the JSON API alone (httpx, the same upload) is timed for comparison.

Usage: python bench/lookup.py [--n 1000] [--queries 30] [--k 10] [--embedder densenet-bc-random]
(prints a markdown table)"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from simdex.defaults import quiet_openmp

quiet_openmp()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "web"))  # the tests' world builder and uvicorn thread

from webworld import UvicornThread, dicom  # noqa: E402

SERIES, PER_SERIES = 4, 5  # a study: 4 series of 5 instances
_MARK = """() => { document.body.dataset.state = 'idle'; window.__doneAt = null;
  new MutationObserver((m, o) => { if (document.body.dataset.state === 'done') {
    window.__doneAt = performance.now(); o.disconnect(); } }).observe(document.body, {attributes: true});
  return performance.now(); }"""
_IMAGES = """() => new Promise(res => {
  const imgs = Array.from(document.querySelectorAll('.thumb img')), left = imgs.filter(i => !i.complete);
  imgs.forEach(i => i.loading = 'eager');
  let n = left.length;
  if (!n) return res(performance.now());
  left.forEach(i => { const f = () => { if (--n === 0) res(performance.now()); };
    i.addEventListener('load', f); i.addEventListener('error', f); }); })"""


def world(root: Path, n: int) -> dict[str, bytes]:
    """`n` DICOM instances (CT and MR studies of SERIES x PER_SERIES) written under `root`, id = path."""
    files = {}
    for i in range(n):
        study, rest = divmod(i, SERIES * PER_SERIES)
        series, inst = divmod(rest, PER_SERIES)
        name = chr(0x4E00 + study)  # one character per study (webworld derives the study UID from it)
        src, modality, body = ("CT_small.dcm", "CT", "CHEST") if study % 2 == 0 else ("MR_small.dcm", "MR", "HEAD")
        rel = f"dcm/s{study:03d}/{series + 1}-{inst}.dcm"
        files[rel] = dicom(src, name, series + 1, inst, modality, body)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
    return files


def pct(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 95))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--embedder", default="densenet-bc-random")
    a = p.parse_args()

    import httpx
    from playwright.sync_api import sync_playwright

    from simdex.clients import Client
    from simdex.server.app import create_server
    from simdex.service.facade import Simdex
    from simdex.web.app import create_app

    base = Path(tempfile.mkdtemp(prefix="simdex-bench-lookup-"))
    service = Simdex(base / "data", None, snapshot_interval=0)
    server, port, _ = create_server(service, "127.0.0.1:0")
    server.start()
    client = Client(f"127.0.0.1:{port}")
    files = world(base / "root", a.n)
    ids = list(files)
    t = time.perf_counter()
    client.create_collection("bench", 0, metric="cosine", embedder=a.embedder, index="Flat")
    for i in range(0, len(ids), 100):
        chunk = ids[i:i + 100]
        client.upsert("bench", chunk, images=[files[c] for c in chunk], metadata=[{"path": c} for c in chunk])
    index_s = time.perf_counter() - t
    web = UvicornThread(create_app(client, root=base / "root"))
    rng = np.random.default_rng(0)
    queries = [ids[j] for j in rng.choice(len(ids), size=a.queries, replace=False)]
    api_ms, rendered_ms, images_ms = [], [], []
    try:
        with httpx.Client(base_url=web.url, timeout=60) as h:
            for q in queries:
                t = time.perf_counter()
                r = h.post("/api/similar", files={"file": ("q.dcm", files[q], "application/dicom")},
                           data={"collection": "bench", "k": str(a.k)})
                api_ms.append(1000 * (time.perf_counter() - t))
                r.raise_for_status()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(web.url)
            page.wait_for_selector("#collection option", state="attached")
            page.fill("#k", str(a.k))
            for q in queries:
                t0 = page.evaluate(_MARK)
                page.set_input_files("#file", files=[{"name": "q.dcm", "mimeType": "application/dicom",
                                                      "buffer": files[q]}])
                page.wait_for_selector("body[data-state=done]", timeout=60_000)
                done = page.evaluate("window.__doneAt")
                loaded = page.evaluate(_IMAGES)
                rendered_ms.append(done - t0)
                images_ms.append(loaded - t0)
            browser.close()
    finally:
        web.stop()
        client.close()
        server.stop(grace=None).wait()
        service.close()
    print(f"collection: {a.n} DICOM instances ({a.n // (SERIES * PER_SERIES)} studies), {a.embedder}, cosine Flat; "
          f"k = {a.k}; {a.queries} queries; indexed in {index_s:.1f} s; {os.cpu_count()} CPUs\n")
    print("| step | p50 ms | p95 ms |\n|---|---|---|")
    for name, xs in (("POST /api/similar (httpx, JSON only)", api_ms),
                     ("browser: setInputFiles -> results rendered", rendered_ms),
                     ("browser: setInputFiles -> every thumbnail loaded", images_ms)):
        p50, p95 = pct(xs)
        print(f"| {name} | {p50:.0f} | {p95:.0f} |")


if __name__ == "__main__":
    main()
