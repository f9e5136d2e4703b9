"""The lookup web page's FastAPI app over one simdex SDK client (`create_app(client, ...)`; served by uvicorn from
`simdex web`, or driven by tests with TestClient or a real uvicorn on port 0).

    GET  /                 the page (static/index.html, app.js, app.css)
    POST /api/similar      multipart `file`, `collection`, `k`, or JSON {"study_uid", "collection", "k"}
                           -> the studies most similar to the query (simdex.web.results)
    GET  /api/collections  {"collections": [{"name", "metric", "embedder", "count", "dim"}], "pacs": bool,
                           "max_upload_bytes": int}: the collections with an image embedder, and the page's setup
    GET  /api/thumbnail    ?collection=C&id=ID -> a hit's PNG (simdex.web.thumbnails), 404 with the reason
    GET  /healthz          {"status": "ok"} when the simdex server answers, else 503

The simdex server embeds the query with the collection's embedder (Search with images=...). The client is
synchronous (gRPC), so every call to it runs in Starlette's thread pool, never on the event loop.

Every response carries a Content-Security-Policy that allows nothing from elsewhere and no inline script or style
(the page's script and style are files of this app), plus nosniff, no-referrer and no framing. Errors are JSON
`{"detail": message}`, with `code` for simdex errors, whose gRPC status maps to its HTTP status below."""
from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from simdex import defaults
from simdex.errors import InvalidArgument, SimdexError
from simdex.lookup.grouping import Hit, search_similar
from simdex.web.pacs import StudyPacs
from simdex.web.results import similar_json
from simdex.web.thumbnails import HitThumbnails
from simdex.web.upload import read_query

LOG = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
# gRPC status of a simdex error -> HTTP status (the usual gRPC-HTTP mapping).
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 400,
               "RESOURCE_EXHAUSTED": 429, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504}


def check_viewer_url(template: str | None) -> str | None:
    """`template` if it is an http(s) URL containing `{study}`; ValueError otherwise (None passes)."""
    if template is not None and (not template.startswith(("http://", "https://")) or "{study}" not in template):
        raise ValueError(f"--viewer-url {template!r}: expected an http(s) URL containing {{study}}, e.g. "
                         "http://pacs:8042/ui/app/#/studies?StudyInstanceUID={study}")
    return template


def create_app(client, *, pacs: StudyPacs | None = None, viewer_url: str | None = None, root=None,
               max_upload_mb: float = defaults.MAX_UPLOAD_MB) -> FastAPI:
    """The app over `client` (a simdex Client, remote or local). `pacs` answers StudyInstanceUID queries and
    renders thumbnails; `viewer_url` is the study link's template; `root` is the folder items' `path` metadata is
    relative to; uploads over `max_upload_mb` MiB are refused with 413."""
    viewer_url = check_viewer_url(viewer_url)
    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb!r}")
    max_bytes = int(max_upload_mb * (1 << 20))
    thumbs = HitThumbnails(root, pacs)
    app = FastAPI(title="simdex lookup", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(SimdexError)
    async def simdex_error(request: Request, exc: SimdexError):
        return JSONResponse({"detail": exc.message, "code": exc.code}, HTTP_STATUS.get(exc.code, 500))

    @app.get("/healthz")
    def healthz():
        try:
            client.list_collections()
        except SimdexError as e:
            return JSONResponse({"status": "unavailable", "detail": e.message}, 503)
        return {"status": "ok"}

    @app.get("/api/collections")
    def collections():
        return {"collections": [{"name": c.name, "metric": c.metric, "embedder": c.embedder, "count": c.count,
                                 "dim": c.dim} for c in _image_collections(client)],
                "pacs": pacs is not None, "max_upload_bytes": max_bytes}

    @app.post("/api/similar")
    async def similar(request: Request):
        q = await read_query(request, max_bytes)
        if q.study_uid is not None:
            if pacs is None:
                raise InvalidArgument("this page has no PACS (simdex web --pacs dicomweb+http://...): a "
                                      "StudyInstanceUID cannot be looked up; upload a file instead")
            data, sop = await run_in_threadpool(pacs.study_instance, q.study_uid)
            name = f"instance {sop} of study {q.study_uid}"
        else:
            data, name = q.data, "the uploaded file"
        info, shown, hits = await run_in_threadpool(search_similar, client, q.collection, data, q.k, name)
        LOG.info("similar in %r: %d hits", q.collection, len(hits))
        return similar_json(info.metric, shown.metadata, hits, lambda h: _thumbnail_url(q.collection, h),
                            viewer_url)

    @app.get("/api/thumbnail")
    def thumbnail(collection: str, id: str):  # noqa: A002 - the item's id, as the JSON names it
        items = client.get(collection, [id], with_vectors=False)
        png, problem = thumbs.get(items[0].metadata)
        if png is None:
            raise HTTPException(404, f"no image for {id!r}: {problem}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    static = resources.files("simdex.web") / "static"
    app.mount("/", StaticFiles(directory=str(static), html=True), name="page")
    return app


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP response, errors included (a plain ASGI wrapper, so the
    upload's body still streams through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def _image_collections(client) -> list:
    """The collections a file can be searched in: usable ones bound to an image embedder."""
    image = {e.name for e in client.list_embedders() if e.modality == "image"}
    return [c for c in client.list_collections() if c.embedder in image and not c.unavailable]


def _thumbnail_url(collection: str, h: Hit) -> str:
    return "/api/thumbnail?" + urlencode({"collection": collection, "id": h.id})
