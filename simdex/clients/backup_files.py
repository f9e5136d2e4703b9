"""A backup streamed by a server (the Backup RPC) written to a folder on this machine: the files go into a temporary
folder beside it, each is checked against the manifest that arrives last, and only then does the folder get its
name. A stream that breaks off, or does not match its manifest, leaves nothing behind."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from simdex.errors import AlreadyExists, Internal

MANIFEST = "manifest.json"
PATH_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # no "..", no hidden files, nothing but plain names


def receive(open_stream: Callable[[], Iterable[tuple[str, bytes]]], out: str | Path) -> dict:
    """Write the (relative path, bytes) pieces of a backup that `open_stream()` yields, in stream order, into the
    new folder `out`; returns its manifest. AlreadyExists, before the stream is opened, when `out` exists; Internal
    when the stream does not add up to a backup."""
    out = Path(out)
    if out.exists():
        raise AlreadyExists(f"{out} already exists: a backup goes into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        digests = _write(open_stream(), tmp)
        manifest = _checked(tmp, digests)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(pieces: Iterable[tuple[str, bytes]], folder: Path) -> dict[str, dict]:
    """Append each piece to its file; returns {path: {"bytes", "sha256"}} of every file written."""
    digests: dict[str, dict] = {}
    name, fh, h = None, None, None
    try:
        for path, data in pieces:
            if path != name:
                if fh is not None:
                    digests[name] = _close(fh, h)
                    fh = None
                name, h = _plain_name(path, digests), hashlib.sha256()
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                fh = open(folder / name, "wb")  # noqa: SIM115 - closed by _close or below
            fh.write(data)
            h.update(data)
        if fh is not None:
            digests[name] = _close(fh, h)
            fh = None
    finally:
        if fh is not None:
            fh.close()
    return digests


def _plain_name(path: str, done: dict) -> str:
    """`path` when it is a relative path of plain names not received before (a server cannot write elsewhere)."""
    parts = PurePosixPath(path).parts
    if not parts or not all(PATH_PART.fullmatch(p) for p in parts) or path in done:
        raise Internal(f"the server sent a backup file named {path!r} (not a plain relative name, or sent twice); "
                       "nothing was kept")
    return path


def _close(fh, h) -> dict:
    fh.flush()
    os.fsync(fh.fileno())
    size = fh.tell()
    fh.close()
    return {"bytes": size, "sha256": h.hexdigest()}


def _checked(folder: Path, digests: dict[str, dict]) -> dict:
    """The manifest, once every file it lists arrived whole and nothing else did."""
    if MANIFEST not in digests:
        raise Internal("the backup stream ended without its manifest (it comes last); nothing was kept")
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
        listed = manifest["files"]
    except (ValueError, TypeError, KeyError):
        raise Internal("the backup stream's manifest is not one (no JSON object with its files); nothing was kept"
                       ) from None
    got = {k: v for k, v in digests.items() if k != MANIFEST}
    if got != listed:
        wrong = sorted(k for k in set(got) | set(listed) if got.get(k) != listed.get(k))
        raise Internal(f"the backup stream does not match its manifest (files {wrong}); nothing was kept")
    return manifest
