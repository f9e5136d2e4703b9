"""The one float32 packing: little-endian float32 bytes (plus a shape on the wire), for gRPC messages, the
database's vector columns and the heads' weights alike; and the one input gate for vectors (`as_matrix`)."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from simdex.errors import InvalidArgument

F32 = np.dtype("<f4")
# The largest squared L2 norm a vector may have: a quarter of float32's maximum (norm <= ~9.2e18), so that every
# inner product (<= |x| |y|) and every squared L2 distance (<= 2 |x|^2 + 2 |y|^2), as FAISS computes them in
# float32, stays finite; and a cosine's normalisation never divides by an overflowed norm.
MAX_SQ_NORM = float(np.finfo(np.float32).max) / 4
_NORM_ROWS = 65_536  # rows per float64 pass of the norm check (bounds its temporary memory)


def as_matrix(x, name: str = "vectors", dim: int | None = None, allow_empty: bool = False,
              dim_of: str = "the collection's dim") -> np.ndarray:
    """The one input gate: `x` as a C-contiguous (n, d) float32 array, d >= 1, with finite values and a squared
    L2 norm of at most MAX_SQ_NORM per row, or InvalidArgument naming `name`, the bad row (as `err.item` too)
    and value. `dim_of` says whose dimension `dim` is, for the message."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise InvalidArgument(f"{name}: not a numeric matrix ({exc})") from None
    if arr.ndim == 1 and arr.size and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{name}: expected a 2-d (n, d) array, got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise InvalidArgument(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape[0] == 0 and not allow_empty:
        raise InvalidArgument(f"{name}: empty batch (0 rows)")
    if arr.shape[1] == 0:
        raise InvalidArgument(f"{name}: vectors of dimension 0, shape {tuple(arr.shape)}")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidArgument(f"{name}: dimension {arr.shape[1]} does not match {dim_of} {dim}")
    _check_norms(arr, name)
    return arr


def _check_norms(arr: np.ndarray, name: str) -> None:
    """Every row of (n, d) float32 `arr` finite with a squared norm <= MAX_SQ_NORM; one pass that also finds NaN
    and infinity (their norms are not <= anything). A float32 screen (sums of squares within d * eps of the true
    value, so no row under the limit overflows or nears it) leaves only rows over half the limit to be summed again
    in float64, which decides; the screen costs about a seventh of a float64 pass (measured at 10,000 x 768).
    One row (a single query, the usual search) is screened by one dot product instead of the einsum pass."""
    if arr.shape[0] == 1:
        with np.errstate(over="ignore", invalid="ignore"):
            if float(np.dot(arr[0], arr[0])) <= MAX_SQ_NORM / 2:  # NaN and overflow fail the comparison
                return
    for start in range(0, arr.shape[0], _NORM_ROWS):
        block = arr[start:start + _NORM_ROWS]
        with np.errstate(over="ignore", invalid="ignore"):
            suspect = np.flatnonzero(~(np.einsum("ij,ij->i", block, block) <= MAX_SQ_NORM / 2))
        if not len(suspect):
            continue
        sq = np.einsum("ij,ij->i", block[suspect], block[suspect], dtype=np.float64)
        bad = np.flatnonzero(~(sq <= MAX_SQ_NORM))
        if not len(bad):
            continue
        row = start + int(suspect[bad[0]])
        if not np.isfinite(arr[row]).all():
            raise InvalidArgument(f"{name}: row {row} holds NaN or infinity; vectors must be finite", item=row)
        raise InvalidArgument(
            f"{name}: row {row} has squared L2 norm {sq[bad[0]]:.3g}, over the limit {MAX_SQ_NORM:.3g} (norm "
            f"{MAX_SQ_NORM ** 0.5:.3g}) under which float32 distances cannot overflow; scale the vectors down",
            item=row)


def to_bytes(x) -> bytes:
    """Any float array -> its little-endian float32 bytes, row-major."""
    return np.ascontiguousarray(x, dtype=F32).tobytes()


def pack(x: np.ndarray):
    """(n, d) float32 -> (bytes, [n, d])."""
    arr = np.ascontiguousarray(x, dtype=F32)
    return arr.tobytes(), list(arr.shape)


def unpack(data: bytes, shape, name: str = "vectors") -> np.ndarray:
    """Packed bytes + shape -> (n, d) float32 (read-only view). InvalidArgument when they disagree."""
    shape = [int(s) for s in shape]
    if len(shape) != 2 or min(shape) < 0:
        raise InvalidArgument(f"{name}: shape must be [n, d] of non-negative sizes, got {shape}")
    n, d = shape
    if n * d * 4 != len(data):
        raise InvalidArgument(
            f"{name}: shape {shape} needs {n * d * 4} bytes of float32, got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=F32).reshape(n, d)


def unpack_floats(data: bytes, count: int = -1, offset: int = 0) -> np.ndarray:
    """Little-endian float32 bytes -> (m,) float32 (read-only view; `count` floats from byte `offset`)."""
    if count < 0 and (len(data) - offset) % 4:
        raise InvalidArgument(f"float32 array of {len(data)} bytes is not a multiple of 4")
    return np.frombuffer(data, dtype=F32, count=count, offset=offset)


def canonical_json(obj: dict) -> str:
    """The one text form of a metadata object (sorted keys, no spaces) that content hashes are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(vector: bytes, metadata_json: str) -> str:
    """Default content hash of an item: sha256 of its float32 bytes and canonical metadata JSON."""
    return hashlib.sha256(vector + b"\0" + metadata_json.encode()).hexdigest()
