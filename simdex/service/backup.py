"""Backups of a simdex store, taken while it serves, and their restore into an empty store.

A backup is a folder, made under a temporary name beside its own and renamed to it once complete:

  manifest.json   written last: format, simdex version, schema revision, the collections (sequence numbers, item
                  counts, the sequence number of their index snapshot), the heads, and the size and sha256 of every
                  other file
  simdex.db       every row, as a SQLite file of simdex's schema, at one point in time (store.backup.export)
  indexes/ID.npz  the index snapshots that agree with those rows

The index snapshots are copied before the rows are: a snapshot's sequence number never passes its collection's, so
each copied one is at or before the rows exported after it, and a server started on the restored store catches it
up from them (restores it, then adds what it lacks and drops what was deleted: Collection.open, as after a crash)
instead of rebuilding every index from scratch. A snapshot that does not agree (of a collection the rows no longer
hold, unreadable, or ahead of its rows) is left out, and that index is rebuilt from the rows.

Restore checks the manifest and every checksum before it touches the target, refuses a store that holds anything,
and writes the rows in one transaction, the snapshots placed before its commit: all of it, or nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine

from simdex import __version__
from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from simdex.store import backup as rows
from simdex.store.engine import default_db_url, make_engine

if TYPE_CHECKING:
    from simdex.service.facade import Simdex

LOG = logging.getLogger(__name__)
FORMAT, FORMAT_VERSION = "simdex-backup", 1
MANIFEST, DATABASE, INDEXES = "manifest.json", "simdex.db", "indexes"
SNAPSHOT = re.compile(r"\d+\.npz")  # Collection.path (not its temporary, nor one set aside as unusable)
READ_BYTES = 1 << 20


def backup(service: Simdex, out: str | Path) -> dict:
    """A backup of the running `service` into the new folder `out`; returns its manifest."""
    return write_backup(out, service.engine, service.collections.snapshot_dir)


def backup_data(out: str | Path, data_dir: str | Path, db_url: str | None = None) -> dict:
    """A backup of the store in `data_dir` (and `db_url`), served or not, into the new folder `out`."""
    engine = rows.source_engine(db_url or default_db_url(data_dir))
    try:
        return write_backup(out, engine, Path(data_dir) / INDEXES)
    finally:
        engine.dispose()


def write_backup(out: str | Path, engine: Engine, snapshot_dir: Path) -> dict:
    """Snapshots from `snapshot_dir`, then the rows behind `engine`, then the manifest, into the new folder `out`,
    every file synced before the folder takes its name."""
    out = Path(out)
    if out.exists():
        raise AlreadyExists(f"{out} already exists: a backup goes into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = fill(tmp, engine, snapshot_dir)
        for path in tmp.rglob("*"):
            if path.is_file():
                _sync(path)
        os.rename(tmp, out)
        _sync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("backup %s: %d collections, %d items", out, len(manifest["collections"]),
             sum(c["items"] for c in manifest["collections"]))
    return manifest


def fill(folder: Path, engine: Engine, snapshot_dir: Path) -> dict:
    """The files of a backup in the empty `folder`, not synced (the Backup RPC streams its copy, then drops it;
    write_backup syncs them); returns the manifest. FailedPrecondition when the database is not at this simdex's
    schema revision."""
    rows.check_revision(engine)
    copy_snapshots(snapshot_dir, folder / INDEXES)
    rows.export(engine, folder / DATABASE)
    manifest = _manifest(folder, engine.dialect.name)
    (folder / MANIFEST).write_bytes(json.dumps(manifest, indent=1).encode())
    return manifest


def copy_snapshots(src: Path, dst: Path) -> None:
    """Copy the index snapshots of `src` into `dst` (each file is replaced atomically by its writer, so an open
    one reads one whole version); one deleted meanwhile is skipped."""
    dst.mkdir()
    for path in sorted(src.glob("*.npz")):
        if SNAPSHOT.fullmatch(path.name):
            try:
                shutil.copyfile(path, dst / path.name)
            except FileNotFoundError:
                continue


def _manifest(folder: Path, database: str) -> dict:
    """The manifest of the backup in `folder`, dropping the snapshots that do not agree with its rows."""
    held = rows.describe(folder / DATABASE)
    by_id = {c["id"]: c for c in held["collections"]}
    for path in sorted((folder / INDEXES).glob("*.npz")):
        col, seq = by_id.get(int(path.stem)), _snapshot_seq(path)
        if col is None or seq is None or seq > col["seq"]:
            LOG.info("backup: leaving out index snapshot %s (its collection rebuilds it at restore)", path.name)
            path.unlink()
            continue
        col["snapshot_seq"] = seq
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "simdex_version": __version__,
        "created_unix_ms": int(time.time() * 1000), "database": database, **held,
        "files": {p.relative_to(folder).as_posix(): _digest(p) for p in files},
    }


def _snapshot_seq(path: Path) -> int | None:
    """The sequence number an index snapshot covers, None when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return int(arrays["seq"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _sync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- restore ---------------------------------------------------------------------------------------------------
def verify(folder: str | Path) -> dict:
    """The manifest of the backup in `folder` once everything agrees with it; InvalidArgument naming what does not
    (a missing manifest or file: a partial backup; a wrong size, checksum or content: a corrupt one)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise InvalidArgument(f"{folder} is not a complete simdex backup: {MANIFEST} is missing (it is written last, "
                              "so the backup was interrupted, or this is not a backup folder)")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as exc:
        raise InvalidArgument(f"{path} is damaged: not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidArgument(f"{path} is not the manifest of a simdex backup")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InvalidArgument(f"{path}: backup format version {manifest.get('format_version')!r}; this simdex "
                              f"({__version__}) reads version {FORMAT_VERSION}")
    revision, made_by = manifest.get("schema_revision"), manifest.get("simdex_version")
    if revision != rows.head_revision():
        raise InvalidArgument(f"the backup in {folder} is of schema revision {revision!r} (simdex {made_by}); this "
                              f"simdex ({__version__}) restores revision {rows.head_revision()}: restore it with "
                              f"simdex {made_by}")
    files = manifest.get("files")
    if not isinstance(files, dict) or DATABASE not in files:
        raise InvalidArgument(f"{path} lists no {DATABASE}: the backup is damaged")
    for name, want in files.items():
        _check_file(folder, name, want)
    _check_contents(folder, manifest)
    return manifest


def _check_file(folder: Path, name: str, want: dict) -> None:
    path = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise InvalidArgument(f"the backup in {folder} is corrupt: its {MANIFEST} lists {name!r}, outside its folder")
    if not path.is_file():
        raise InvalidArgument(f"the backup in {folder} is partial: {name}, listed in its {MANIFEST}, is missing")
    got, want = _digest(path), want if isinstance(want, dict) else {}
    if got != want:
        raise InvalidArgument(f"the backup in {folder} is corrupt: {name} has {got['bytes']} bytes of sha256 "
                              f"{got['sha256']}, its {MANIFEST} says {want.get('bytes')} bytes of sha256 "
                              f"{want.get('sha256')}")


def _check_contents(folder: Path, manifest: dict) -> None:
    """The rows and snapshots hold what the manifest says (its checksums cover the files, not the manifest)."""
    held = rows.describe(folder / DATABASE)
    cols = manifest.get("collections")
    if not isinstance(cols, list) or not all(isinstance(c, dict) for c in cols):
        raise InvalidArgument(f"the backup in {folder} is corrupt: its {MANIFEST} has no list of collections")
    listed = [{k: v for k, v in c.items() if k != "snapshot_seq"} for c in cols]
    for key, got, want in (("schema_revision", held["schema_revision"], manifest["schema_revision"]),
                           ("collections", held["collections"], listed),
                           ("heads", held["heads"], manifest.get("heads"))):
        if got != want:
            raise InvalidArgument(f"the backup in {folder} is corrupt: its {DATABASE} holds {key} {got}, its "
                                  f"{MANIFEST} says {want}")
    for col in cols:
        name = f"{INDEXES}/{col['id']}.npz"
        if ("snapshot_seq" in col) != (name in manifest["files"]):
            raise InvalidArgument(f"the backup in {folder} is corrupt: its {MANIFEST} disagrees with itself about "
                                  f"the index snapshot {name} of collection {col['name']!r}")


def _snapshot_files(manifest: dict) -> list[str]:
    """The backup's index snapshot files, relative to its folder."""
    return [f"{INDEXES}/{c['id']}.npz" for c in manifest["collections"] if "snapshot_seq" in c]


def restore(folder: str | Path, data_dir: str | Path, db_url: str | None = None) -> dict:
    """Bring the backup in `folder` back into the empty store of `data_dir` (and `db_url`); returns its manifest.
    Run it with no server on that store; start one afterwards."""
    folder, data_dir = Path(folder), Path(data_dir)
    manifest = verify(folder)
    indexes = data_dir / INDEXES
    if any(indexes.glob("*.npz")):
        raise FailedPrecondition(f"{indexes} holds index snapshots: restore goes into an empty store only; "
                                 "nothing was changed")
    indexes.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []

    def place_snapshots() -> None:
        for name in _snapshot_files(manifest):
            placed.append(data_dir / name)
            shutil.copyfile(folder / name, data_dir / name)

    engine = make_engine(db_url or default_db_url(data_dir))
    try:
        rows.restore_rows(folder / DATABASE, engine, place_snapshots)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    LOG.info("restored %s into %s: %d collections", folder, data_dir, len(manifest["collections"]))
    return manifest
