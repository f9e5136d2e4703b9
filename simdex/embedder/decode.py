"""Raw input bytes -> (H, W, 3) uint8 RGB arrays for image embedders: DICOM through simdex.embedder.dicom,
everything else through Pillow.

Every failure names the item with the caller's label ("images[3] (id 'scan-7')"), so one bad file in a batch of
thousands can be found, and carries its position in the batch as `err.item` (so callers never parse the message).

Decoding has a budget (the server's `Limits`): what a request's images decode to, width x height x frames x
samples per pixel, at most `max_decoded_mpixels` million, and a DICOM dataset at most `max_dicom_mb` once inflated.
`admit` checks a whole request from the headers alone, before any pixel is decoded: a small file declaring a huge
canvas, or a batch of them, costs nothing. `iter_decoded` then yields one frame at a time, so a caller that
consumes frames as they come (`embed_raw`) holds one decoded image, not the request's."""
from __future__ import annotations

import logging
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simdex.embedder import dicom
from simdex.errors import InvalidArgument, ResourceExhausted, SimdexError
from simdex.limits import Limits

LOG = logging.getLogger(__name__)

# Pixels one image may have, whatever the limits say (`max_frame_mpixels`, 16 MP by default, is the bound an operator
# sets below it). Checked from the header, before any pixel is decoded. Pillow's own guard warns above 89.5 MP and
# refuses above 179 MP (DecompressionBombError, made the same error as ours); this bound makes every image above
# 100 MP an error without touching Pillow's process-wide setting.
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


def decode_image(data: bytes, what: str = "image", all_frames: bool = False, item: int | None = None,
                 limits: Limits | None = None) -> list[Decoded]:
    """Encoded image or DICOM Part-10 bytes -> one Decoded per frame.

    DICOM gives its middle frame, or every frame with `all_frames`; other formats give their first frame.
    Raises InvalidArgument (or FailedPrecondition for a DICOM codec missing here, ResourceExhausted for an input
    over `limits`) whose message starts with `what` and whose `item` is `item` (the input's position in its
    batch)."""
    return list(iter_frames(data, what, all_frames, item, limits))


def iter_frames(data: bytes, what: str = "image", all_frames: bool = False, item: int | None = None,
                limits: Limits | None = None) -> Iterator[Decoded]:
    """decode_image one frame at a time: each frame is decoded when it is asked for."""
    kind = _kind(data, what, item)
    with _named(what, kind, len(data), item):
        if kind == "DICOM":
            img = dicom.open_image(bytes(data), all_frames, limits)
            for i, frame in img:
                yield Decoded(_as_rgb(frame), img.metadata, i)
                del frame  # one decoded frame at a time: this one goes before the next is decoded
        else:
            yield Decoded(_from_pillow(_open_pillow(data, limits or Limits())), {}, 0)


def decoded_samples(data: bytes, what: str = "image", all_frames: bool = False, item: int | None = None,
                    limits: Limits | None = None) -> int:
    """What decoding `data` produces, width x height x frames x samples per pixel, from its header alone (a DICOM
    dataset is parsed, its pixel data left encoded). Raises as decode_image does for a bad or oversized input."""
    kind = _kind(data, what, item)
    with _named(what, kind, len(data), item):
        if kind == "DICOM":
            return dicom.open_image(bytes(data), all_frames, limits).samples
        return _samples(_open_pillow(data, limits or Limits()))


def admit(items: Sequence[bytes], labels: Sequence[str], all_frames: bool = False,
          limits: Limits | None = None) -> int:
    """Check a request's images against the decoding budget from their headers, before any pixel is decoded.
    Returns the samples they decode to. The first bad item raises as decode_image does; the item that takes the
    total past `limits.max_decoded_mpixels` raises ResourceExhausted naming the limit and its flag, with `item`
    = its index."""
    if len(items) != len(labels):
        raise InvalidArgument(f"{len(items)} items but {len(labels)} labels")
    limits = limits or Limits()
    total = 0
    for i, (x, label) in enumerate(zip(items, labels)):
        total += decoded_samples(x, label, all_frames, i, limits)
        if total > limits.max_decoded_mpixels * 1e6:
            err = limits.refuse("max_decoded_mpixels", dicom.mpixels(total),
                                f"{label}: images[0..{i}] of this request decode to that many megapixels "
                                "(width x height x frames x samples per pixel); send fewer images per request")
            err.item = i
            raise err
    return total


def iter_decoded(items: Sequence[bytes], labels: Sequence[str], all_frames: bool = False,
                 limits: Limits | None = None) -> Iterator[tuple[int, Decoded]]:
    """(item index, frame) of every frame of a request, one decoded at a time, after `admit` passed the whole
    request: an item that is bad or over the budget by its header fails before anything is decoded."""
    admit(items, labels, all_frames, limits)
    for i, (x, label) in enumerate(zip(items, labels)):
        for d in iter_frames(x, label, all_frames, i, limits):
            yield i, d
            del d  # one decoded frame at a time: this one goes before the next is decoded


def decode_many(items: Sequence[bytes], labels: Sequence[str], all_frames: bool = False,
                workers: int = 0, limits: Limits | None = None) -> list[list[Decoded]]:
    """decode_image over a batch: result[i] holds item i's frames. The batch is admitted first (`admit`), then
    every item is decoded before this returns; the first bad item (in input order) raises, with `err.item` = its
    index. `workers` > 1 decodes in that many threads (Pillow and pydicom's codecs release the GIL for much of
    their work). Holds every decoded frame at once: a caller that can take frames one by one uses iter_decoded."""
    admit(items, labels, all_frames, limits)
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="simdex-decode") as pool:
            return list(pool.map(lambda i: decode_image(items[i], labels[i], all_frames, i, limits),
                                 range(len(items))))
    return [decode_image(x, label, all_frames, i, limits) for i, (x, label) in enumerate(zip(items, labels))]


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


def _kind(data, what: str, item: int | None) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{what}: expected encoded bytes, got {type(data).__name__}", item=item)
    if len(data) == 0:
        raise InvalidArgument(f"{what}: cannot decode: the input is empty (0 bytes)", item=item)
    return "DICOM" if dicom.is_dicom(data) else "image"


@contextmanager
def _named(what: str, kind: str, n_bytes: int, item: int | None):
    """Errors raised inside name the input (`what`) and carry its position (`item`)."""
    try:
        yield
    except ResourceExhausted as e:
        raise ResourceExhausted(f"{what}: {e.message}", item=item) from e
    except SimdexError as e:
        raise type(e)(f"{what}: cannot decode {kind} ({n_bytes:,} bytes): {e.message}", item=item) from e


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W) grey -> (H, W, 3) with three equal channels; (H, W, 3) unchanged."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _open_pillow(data: bytes, limits: Limits) -> Image.Image:
    """Any format Pillow reads -> the opened image, its header read and checked (MAX_PIXELS, then the decoding
    budget), no pixel decoded yet."""
    try:
        im = Image.open(BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidArgument("neither a DICOM Part-10 file (no 'DICM' marker at byte 128) nor an image format "
                              "Pillow reads") from None
    except Image.DecompressionBombError as e:  # Pillow's own refusal, above 2 x Image.MAX_IMAGE_PIXELS
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than Pillow opens"
        raise InvalidArgument(f"the image declares {size}, over the limit of {MAX_PIXELS:,} pixels one image may "
                              "have (decompression bomb guard)") from None
    except _BAD_IMAGE as e:
        raise InvalidArgument(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InvalidArgument(f"{im.format} image of {w}x{h} = {w * h:,} pixels exceeds the limit of "
                              f"{MAX_PIXELS:,} (decompression bomb guard)")
    if w * h > limits.max_frame_mpixels * 1e6:
        raise limits.refuse("max_frame_mpixels", dicom.mpixels(w * h), f"{im.format} image of {w}x{h}: megapixels")
    n = _samples(im)
    if n > limits.max_decoded_mpixels * 1e6:
        raise limits.refuse("max_decoded_mpixels", dicom.mpixels(n),
                            f"{im.format} image of {w}x{h} with {len(im.getbands())} sample(s) per pixel decodes "
                            "to that many megapixels")
    return im


def _samples(im: Image.Image) -> int:
    """Width x height x samples per pixel of an opened image (its first frame: the one decoded)."""
    w, h = im.size
    return w * h * len(im.getbands())


def _from_pillow(im: Image.Image) -> np.ndarray:
    """An opened image -> (H, W, 3) uint8: first frame, EXIF orientation applied."""
    try:
        im.load()  # Image.open only reads the header; truncated or corrupt data fails here
        _exif_transpose(im)
        return _to_rgb(im)
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
    if im.mode == "L":  # the same pixels as convert("RGB"), without its 4-byte-a-pixel intermediate
        return _as_rgb(np.asarray(im))
    rgb = im if im.mode == "RGB" else im.convert("RGB")  # convert copies even an RGB image: 4 bytes a pixel
    return np.ascontiguousarray(np.asarray(rgb), dtype=np.uint8)


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
