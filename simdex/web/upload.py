"""The request of `POST /api/similar`, read within a size limit: multipart (`file`, `collection`, `k`) or JSON
(`{"study_uid", "collection", "k"}`).

The body is counted while it arrives: a declared Content-Length over the limit is refused before any byte is read,
and a body that grows past it is refused as soon as it does (HTTP 413), so no more than the limit is ever held.
Multipart parts go through Starlette's parser, which spools the file part to a temporary file above 1 MiB."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from simdex.errors import InvalidArgument

FORM_SLACK = 64 << 10      # multipart boundaries, part headers and the small fields, on top of the file's limit
MAX_JSON_BYTES = 64 << 10  # a JSON query is a UID, a name and a number
MAX_K = 500                # hits one page shows: each is a thumbnail request


@dataclass(frozen=True)
class Query:
    """What to search with: the uploaded file's bytes (`data`) or a StudyInstanceUID known to the PACS."""
    collection: str
    k: int
    data: bytes | None = None
    study_uid: str | None = None


def too_large(limit: int, what: str) -> HTTPException:
    return HTTPException(413, f"{what} is larger than the limit of {limit:,} bytes (simdex web --max-upload-mb)")


async def _capped(stream: AsyncIterator[bytes], limit: int, what: str) -> AsyncIterator[bytes]:
    n = 0
    async for chunk in stream:
        n += len(chunk)
        if n > limit:
            raise too_large(limit, what)
        yield chunk


async def read_query(request: Request, max_file_bytes: int) -> Query:
    """The Query of `request` (module docstring); HTTPException 413 over the limit, 415 for another content type,
    InvalidArgument naming the bad field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request, max_file_bytes)
    if kind == "application/json":
        body = b"".join([c async for c in _body(request, MAX_JSON_BYTES, "the JSON body")])
        return _from_json(body)
    raise HTTPException(415, f"content type {kind or 'none'!r}: send multipart/form-data (file, collection, k) or "
                             "application/json ({\"study_uid\", \"collection\", \"k\"})")


def _body(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The request's body stream, capped at `limit`: a declared Content-Length over it is refused now, a body that
    grows past it as it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what)
    return _capped(request.stream(), limit, what)


async def _multipart(request: Request, max_file_bytes: int) -> Query:
    limit = max_file_bytes + FORM_SLACK
    body = _body(request, limit, "the upload")
    try:
        form = await MultiPartParser(request.headers, body, max_files=1, max_fields=4).parse()
    except MultiPartException as e:
        raise InvalidArgument(f"multipart body: {e.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidArgument("multipart field 'file' is missing: drop a DICOM, PNG or JPEG file")
        data = await file.read(max_file_bytes + 1)
        if len(data) > max_file_bytes:
            raise too_large(max_file_bytes, "the file")
        if not data:
            raise InvalidArgument("multipart field 'file' is empty")
        return Query(_collection(form.get("collection")), _k(form.get("k", "10")), data=data)
    finally:
        await form.close()


def _from_json(body: bytes) -> Query:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidArgument(f"JSON body: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON body: expected an object, got {type(doc).__name__}")
    study = doc.get("study_uid")
    if not isinstance(study, str) or not study:
        raise InvalidArgument("JSON body: 'study_uid' (a StudyInstanceUID known to the PACS) is missing")
    return Query(_collection(doc.get("collection")), _k(doc.get("k", 10)), study_uid=study.strip())


def _collection(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument("'collection' is missing: pick a collection (GET /api/collections lists them)")
    return value.strip()


def _k(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_K:
        raise InvalidArgument(f"'k' must be a whole number from 1 to {MAX_K}, got {str(value)[:40]!r}")
    return value
