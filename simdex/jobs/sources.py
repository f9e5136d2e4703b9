"""What `simdex index` reads: the files of a folder or a list, or the rows of a .npy / Parquet file of vectors.

File sources give `FileItem`s (id = the path relative to the folder, or to the list file's folder, posix style),
planned (read, hashed, frames counted) into `Planned` files; a PACS source (simdex.jobs.dicomweb) gives FileItems
too, with an `origin` (the instance's WADO-RS URL) and a path its bytes are spooled to. Vector sources give
`VectorBlock`s. What a decoding worker does with a file lives with the local-embedding pipeline
(simdex.jobs.local_embed)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})
VECTOR_EXTS = frozenset({".npy", ".parquet", ".pq"})


@dataclass(frozen=True)
class FileItem:
    """One input file: `id` (posix path relative to the source root) and where it is. `origin`: where a file that is
    a copy came from (a PACS instance's WADO-RS URL; its `path` is then a temporary spool file); '' for files."""
    id: str
    path: Path
    origin: str = ""

    @property
    def where(self) -> str:
        """What reports name: the origin of a copy, else the file's path."""
        return self.origin or str(self.path)


@dataclass
class VectorBlock:
    """Consecutive rows of a vector source: ids, (n, d) float32 `x` (may hold NaN: checked per row later),
    one metadata dict per row."""
    ids: list[str]
    x: np.ndarray
    metadata: list[dict]


@dataclass
class VectorSource:
    """`n` rows of dimension `dim`, read block by block by `blocks(size)`."""
    n: int
    dim: int
    blocks: Callable[[int], Iterator[VectorBlock]]


# ---- file sources -------------------------------------------------------------------------------------------
def has_dicom_preamble(path: Path) -> bool:
    """Whether the file starts as DICOM Part-10 (the marker test is simdex.embedder.dicom_file.is_dicom's)."""
    from simdex.embedder.dicom_file import is_dicom  # noqa: PLC0415 - pydicom loads on demand

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)  # the 128-byte preamble and b"DICM"
    except OSError:
        return False
    return is_dicom(head)


def _wanted(path: Path) -> bool:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return True
    return ext == "" and has_dicom_preamble(path)  # DICOM often comes without an extension (PACS exports)


def folder_items(root: Path) -> list[FileItem]:
    """Image and DICOM files under `root` (recursive, hidden entries skipped), sorted by id."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            p = base / name
            if not name.startswith(".") and _wanted(p):
                out.append(FileItem(p.relative_to(root).as_posix(), p))
    return sorted(out, key=lambda it: it.id)


def list_items(list_file: Path) -> list[FileItem]:
    """The paths in a text file, one per line (blank lines and '#' comments skipped), relative to its folder.

    Missing files stay in the list: reading them fails and is reported like any other bad file."""
    base = list_file.parent
    out, seen = [], set()
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = Path(os.path.normpath(line))
        id_ = rel.as_posix()
        if id_ in seen:
            raise InvalidArgument(f"{list_file}: line {n}: path {line!r} is listed twice")
        seen.add(id_)
        out.append(FileItem(id_, rel if rel.is_absolute() else base / rel))
    return out


@dataclass
class Planned:
    """A file read for planning: its digest, its item ids and content hashes, whether it is DICOM, how many frames
    it declares, and (when kept for sending) its bytes."""
    index: int
    item: FileItem
    ids: list[str]
    hashes: list[str]
    dicom: bool
    n_frames: int
    data: bytes | None


def plan_file(index: int, item: FileItem, all_frames: bool, keep_bytes: bool) -> Planned:
    """Read and hash one file (raises OSError). Multi-frame DICOM headers are parsed to learn the frame count."""
    return plan_bytes(index, item, item.path.read_bytes(), all_frames, keep_bytes)


def plan_bytes(index: int, item: FileItem, data: bytes, all_frames: bool, keep_bytes: bool) -> Planned:
    """Plan `item` from its bytes `data`: sha256, DICOM or not, frame count, ids and content hashes."""
    from simdex.embedder.dicom_file import is_dicom  # noqa: PLC0415 - pydicom loads on demand

    digest = hashlib.sha256(data).hexdigest()
    dicom = is_dicom(data)
    n = frames_in(data) if dicom else 1
    ids = frame_ids(item.id, n, all_frames)
    return Planned(index, item, ids, frame_hashes(digest, len(ids)), dicom, n, data if keep_bytes else None)


def frames_in(data: bytes) -> int:
    """How many frames DICOM bytes declare (1 when the header cannot be read: decoding reports the file later).
    Parses the header only."""
    from io import BytesIO  # noqa: PLC0415

    import pydicom  # noqa: PLC0415

    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:  # noqa: BLE001 - any unreadable header: the decoder names the problem later
        return 1


def frame_ids(id_: str, n_frames: int, all_frames: bool) -> list[str]:
    """Ids of one file's items: the file's id, or 'id#frame' per frame of a multi-frame DICOM with `all_frames`."""
    if all_frames and n_frames > 1:
        return [f"{id_}#{f}" for f in range(n_frames)]
    return [id_]


def frame_hashes(digest: str, n: int) -> list[str]:
    """Content hashes of one file's items: the file's sha256, plus '#frame' when it gives several items."""
    return [digest] if n == 1 else [f"{digest}#{f}" for f in range(n)]


def item_metadata(item: FileItem, tags: dict, frame: int | None) -> dict:
    """What an item stores: the allow-listed DICOM tags, its file's absolute path (none for a copy: a PACS instance
    is found again by its UIDs, which are among the tags) and, for DICOM, the frame."""
    meta = dict(tags) if item.origin else {**tags, "path": str(Path(item.path).absolute())}
    if frame is not None:
        meta["frame"] = int(frame)
    return meta


# ---- vector sources -------------------------------------------------------------------------------------------
def npy_source(path: Path, ids_file: Path | None) -> VectorSource:
    """Rows of an (n, d) .npy file (memory-mapped); ids are row numbers or the lines of `ids_file`."""
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    if x.ndim != 2 or x.shape[1] < 1:
        raise InvalidArgument(f"{path}: expected a 2-d (n, d) array, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise InvalidArgument(f"{path}: expected numbers, got dtype {x.dtype}")
    n = len(x)
    ids = _read_ids(ids_file, n) if ids_file else None

    def blocks(size: int) -> Iterator[VectorBlock]:
        for a in range(0, n, size):
            b = min(n, a + size)
            part = ids[a:b] if ids else [str(i) for i in range(a, b)]
            yield VectorBlock(part, np.array(x[a:b], dtype=np.float32), [{} for _ in part])

    return VectorSource(n, int(x.shape[1]), blocks)


def _read_ids(path: Path, n: int) -> list[str]:
    ids = path.read_text(encoding="utf-8").splitlines()
    if len(ids) != n:
        raise InvalidArgument(f"--ids-file {path}: {len(ids)} lines for {n} vectors")
    if len(set(ids)) != n:
        raise InvalidArgument(f"--ids-file {path}: ids repeat")
    return ids


def parquet_source(path: Path, vector_column: str = "vector", id_column: str = "id") -> VectorSource:
    """Rows of a Parquet file: a list column of floats (`vector_column`), `id_column` (else row numbers), every
    other column into the metadata."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise InvalidArgument(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if vector_column not in names:
        raise InvalidArgument(f"{path}: no column {vector_column!r} (columns: {names}); see --vector-column")
    n = pf.metadata.num_rows
    first = next(pf.iter_batches(batch_size=1, columns=[vector_column]), None)
    dim = len(first.column(0)[0].as_py()) if first is not None and n else 0
    if n and dim < 1:
        raise InvalidArgument(f"{path}: column {vector_column!r} holds empty vectors")

    def blocks(size: int) -> Iterator[VectorBlock]:
        row = 0
        for rb in pf.iter_batches(batch_size=size):
            yield _parquet_block(rb, vector_column, id_column, row, dim, path)
            row += rb.num_rows

    return VectorSource(n, dim, blocks)


def _parquet_block(rb, vector_column: str, id_column: str, row0: int, dim: int, path: Path) -> VectorBlock:
    cols = rb.to_pydict()
    vecs = cols.pop(vector_column)
    ids = [str(v) for v in cols.pop(id_column)] if id_column in cols else \
        [str(row0 + i) for i in range(rb.num_rows)]
    x = np.full((rb.num_rows, dim), np.nan, np.float32)  # a null or wrong-length vector stays NaN: a failed row
    for i, v in enumerate(vecs):
        if v is not None and len(v) == dim:
            x[i] = np.asarray([np.nan if f is None else f for f in v], dtype=np.float32)
    metas = [{k: _json_safe(cols[k][i]) for k in cols} for i in range(rb.num_rows)]
    return VectorBlock(ids, x, metas)


def _json_safe(v):
    """Parquet values -> JSON values: dates and times as ISO text, bytes as hex, anything else as its text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def open_source(source: Path, ids_file: Path | None = None, vector_column: str = "vector",
                id_column: str = "id") -> list[FileItem] | VectorSource:
    """A folder or text list -> file items; a .npy or Parquet file -> a VectorSource."""
    if source.is_dir():
        return folder_items(source)
    if not source.is_file():
        raise InvalidArgument(f"source {str(source)!r}: no such file or folder")
    ext = source.suffix.lower()
    if ext == ".npy":
        return npy_source(source, ids_file)
    if ext in VECTOR_EXTS:
        return parquet_source(source, vector_column, id_column)
    if ext in IMAGE_EXTS or has_dicom_preamble(source):
        raise InvalidArgument(f"source {str(source)!r} is an image: give its folder, or a text file listing it")
    return list_items(source)
