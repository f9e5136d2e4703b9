"""Raw input bytes -> (H, W, 3) uint8 RGB arrays for image embedders: DICOM through simdex.embedder.dicom,
everything else through Pillow.

Every failure names the item with the caller's label ("images[3] (id 'scan-7')"), so one bad file in a batch of
thousands can be found, and carries its position in the batch as `err.item` (so callers never parse the message).
`decode_many` decodes a whole batch before returning: a bad item fails the request before anything is embedded or
written."""
from __future__ import annotations

import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simdex.embedder import dicom
from simdex.errors import InvalidArgument, SimdexError

LOG = logging.getLogger(__name__)

# Pixels one image may have. Checked from the header, before any pixel is decoded, so a small file declaring a huge
# canvas (a decompression bomb) costs nothing. Pillow's own guard warns above 89.5 MP and refuses above 179 MP;
# this bound makes every image above 100 MP an error without touching Pillow's process-wide setting.
MAX_PIXELS = dicom.MAX_FRAME_PIXELS
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What Pillow raises on bad bytes (UnidentifiedImageError and truncation errors are OSErrors).
_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
              ZeroDivisionError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Decoded:
    """One frame ready for an embedder: `rgb` (H, W, 3) uint8, C-contiguous; `metadata` the DICOM allow-listed tags
    ({} for other images); `frame` the 0-based frame index within its input (0 for single images)."""
    rgb: np.ndarray
    metadata: dict
    frame: int


def decode_image(data: bytes, what: str = "image", all_frames: bool = False,
                 item: int | None = None) -> list[Decoded]:
    """Encoded image or DICOM Part-10 bytes -> one Decoded per frame.

    DICOM gives its middle frame, or every frame with `all_frames`; other formats give their first frame.
    Raises InvalidArgument (or FailedPrecondition for a DICOM codec missing here) whose message starts with `what`
    and whose `item` is `item` (the input's position in its batch)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{what}: expected encoded bytes, got {type(data).__name__}", item=item)
    if len(data) == 0:
        raise InvalidArgument(f"{what}: cannot decode: the input is empty (0 bytes)", item=item)
    kind = "DICOM" if dicom.is_dicom(data) else "image"
    try:
        if kind == "DICOM":
            return _from_dicom(bytes(data), all_frames)
        return [Decoded(_from_pillow(data), {}, 0)]
    except SimdexError as e:
        raise type(e)(f"{what}: cannot decode {kind} ({len(data):,} bytes): {e.message}", item=item) from e


def decode_many(items: Sequence[bytes], labels: Sequence[str], all_frames: bool = False,
                workers: int = 0) -> list[list[Decoded]]:
    """decode_image over a batch: result[i] holds item i's frames. All items are decoded before this returns;
    the first bad item (in input order) raises, with `err.item` = its index. `workers` > 1 decodes in that many
    threads (Pillow and pydicom's codecs release the GIL for much of their work)."""
    if len(items) != len(labels):
        raise InvalidArgument(f"{len(items)} items but {len(labels)} labels")
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="simdex-decode") as pool:
            return list(pool.map(lambda i: decode_image(items[i], labels[i], all_frames, i), range(len(items))))
    return [decode_image(x, label, all_frames, i) for i, (x, label) in enumerate(zip(items, labels))]


def thumbnail_png(rgb: np.ndarray, max_side: int = 256) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG bytes whose longer side is at most `max_side` (aspect kept, never upscaled)."""
    if not isinstance(max_side, int) or max_side < 1:
        raise InvalidArgument(f"max_side must be a positive integer, got {max_side!r}")
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape:
        raise InvalidArgument(f"thumbnail needs a non-empty (H, W, 3) or (H, W) uint8 array, got {a.shape} {a.dtype}")
    im = Image.fromarray(np.ascontiguousarray(a))
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _from_dicom(data: bytes, all_frames: bool) -> list[Decoded]:
    d = dicom.decode(data, all_frames=all_frames)
    return [Decoded(_as_rgb(f), d.metadata, i) for f, i in zip(d.frames, d.frame_indices)]


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W) grey -> (H, W, 3) with three equal channels; (H, W, 3) unchanged."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _from_pillow(data: bytes) -> np.ndarray:
    """Any format Pillow reads -> (H, W, 3) uint8: first frame, EXIF orientation applied."""
    try:
        im = Image.open(BytesIO(data))
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise InvalidArgument(f"{im.format} image of {w}x{h} = {w * h:,} pixels exceeds the limit of "
                                  f"{MAX_PIXELS:,} (decompression bomb guard)")
        im.load()  # Image.open only reads the header; truncated or corrupt data fails here
        _exif_transpose(im)
        return _to_rgb(im)
    except UnidentifiedImageError:
        raise InvalidArgument("neither a DICOM Part-10 file (no 'DICM' marker at byte 128) nor an image format "
                              "Pillow reads") from None
    except _BAD_IMAGE as e:
        raise InvalidArgument(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e


def _exif_transpose(im: Image.Image) -> None:
    """Turn `im` upright as its EXIF Orientation says. Broken EXIF is ignored: the pixels are still good."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except _BAD_IMAGE as e:
        LOG.warning("EXIF orientation ignored (%s: %s)", type(e).__name__, e)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> (H, W, 3) uint8.

    Transparent images are composited on white (what a viewer shows; the colour under alpha 0 is arbitrary).
    16-bit and 32-bit grey are scaled, not clipped as Pillow's convert would clip them at 255."""
    if im.mode in _HIGH_DEPTH_MODES:
        return _as_rgb(_grey_to_uint8(np.asarray(im), im.mode))
    if im.mode in _ALPHA_MODES or "transparency" in im.info:  # Image.has_transparency_data needs Pillow 10.1
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")), dtype=np.uint8)


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """High-depth grey (H, W) -> uint8. 16-bit modes by their full range (x / 257); mode "I" (32-bit integers, how
    Pillow reads some 16-bit formats) as 8-bit when its values fit 8 bits, else as 16-bit when they fit 16 bits;
    floats and wider integers stretched between their finite min and max."""
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, (255.0 if hi <= 255 else 65535.0)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    out = np.clip((np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(out).astype(np.uint8)
