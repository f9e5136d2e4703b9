"""The one float32 packing: little-endian float32 bytes (plus a shape on the wire), for gRPC messages, the
database's vector columns and the heads' weights alike; and the one input gate for vectors (`as_matrix`)."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from simdex.errors import InvalidArgument

F32 = np.dtype("<f4")


def as_matrix(x, name: str = "vectors", dim: int | None = None, allow_empty: bool = False,
              dim_of: str = "the collection's dim") -> np.ndarray:
    """The one input gate: `x` as a C-contiguous (n, d) float32 array, d >= 1, with finite values, or
    InvalidArgument naming `name` and the bad value. `dim_of` says whose dimension `dim` is, for the message."""
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
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise InvalidArgument(f"{name}: row {bad} holds NaN or infinity; vectors must be finite")
    return arr


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
    if len(shape) != 2:
        raise InvalidArgument(f"{name}: shape must be [n, d], got {shape}")
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
