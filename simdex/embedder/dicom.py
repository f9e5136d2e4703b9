"""DICOM Part-10 bytes -> display-ready uint8 frames and an allow-list of non-identifying tags (pydicom >= 3).

Pixel pipeline for one frame (DICOM PS3.3 C.11 and C.7.6.3):

* monochrome: stored values -> Modality LUT (LUT or rescale slope/intercept) -> VOI LUT, or else the first window
  centre/width -> full output range mapped to 0..255 -> MONOCHROME1 inverted, so bright = dense everywhere
  (Presentation LUT Shape is not applied on top: the INVERSE that MONOCHROME1 objects carry states this inversion).
  Without VOI information: data of at most 8 stored bits that no modality transform touches is scaled by its bit
  range (8-bit images as stored, 1-bit masks to 0/255); anything else is stretched between its 0.5th and 99.5th
  percentiles, robust to the padding values (e.g. -2000 outside a CT's field of view) that min/max would chase.
  Enhanced multi-frame objects carry rescale and windows in functional groups: the shared and then the frame's
  own groups override the top-level values.
* colour: YBR decoded to RGB; PALETTE COLOR through its lookup table; more than 8 bits scaled to 8.

Budget: `open_image` checks an instance against the server's Limits from its header, before any pixel is decoded
(frame size: max_frame_mpixels; rows x columns x frames x samples: max_decoded_mpixels; a deflated dataset inflates
within max_dicom_mb, in simdex.embedder.dicom_file), and yields its frames one at a time. The display transforms
work in place on one float64 copy (about 14 bytes a pixel at the peak for a windowed 16-bit frame, not 44).

Only Part-10 files (b"DICM" at byte 128) are read: a bare dataset without the preamble needs pydicom's
force=True, which accepts almost any bytes as "DICOM" and would turn corrupt images into nonsense datasets.
Errors are `InvalidArgument` (the bytes are bad), or `FailedPrecondition` when the data is valid but this
installation lacks the codec for its transfer syntax: retrying cannot help until an operator installs the named
plugin, and a batch job should stop and say so rather than skip every file of that syntax."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from pydicom import uid as U
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, as_pixel_options,
                            convert_color_space, get_decoder)

from simdex.embedder.dicom_file import BAD_DATA as _BAD_DATA
from simdex.embedder.dicom_file import is_dicom, read  # noqa: F401 - is_dicom and read are this module's API too
from simdex.embedder.dicom_file import reason as _reason
from simdex.errors import FailedPrecondition, InvalidArgument
from simdex.limits import Limits

LOG = logging.getLogger(__name__)

MAX_FRAME_PIXELS = 100_000_000     # rows x columns of one frame (the same bound as Pillow images get)
# What one decode may produce, and how large a dataset may be once inflated, come from the server's Limits
# (max_decoded_mpixels, max_dicom_mb): `open_image` checks both before any pixel is decoded.
PERCENTILES = (0.5, 99.5)          # the stretch used when a frame carries no VOI information

# Tags that may leave this module. Acquisition and encoding facts only. Never anything naming or dating a person,
# a place or a visit (PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge, OtherPatientIDs,
# InstitutionName, ReferringPhysicianName, AccessionNumber, StudyDate/Time, ...), and no free-text fields
# (StudyDescription, SeriesDescription, ImageComments, ProtocolName: sites type names into them).
# The instance UIDs are kept because the lookup groups results by study and series; they point at a PACS record,
# not at a person, but a site whose UIDs are not de-identified upstream (PS3.15 replaces them) should drop them here.
SAFE_TAGS: tuple[str, ...] = (
    # what was imaged, and how
    "Modality", "BodyPartExamined", "Manufacturer", "SOPClassUID",
    # where the image belongs
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber", "InstanceNumber",
    # geometry and encoding
    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "SliceThickness", "PhotometricInterpretation",
    "BitsStored", "TransferSyntaxUID",
    # display transforms
    "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept",
)
_FLOAT_VRS = frozenset({"DS", "FD", "FL"})
_INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})

# Decoding plugins pydicom can use per compressed transfer syntax (pydicom's "Pixel Data Decompression" table)
# and what to pip-install for each; "pydicom" is its own pure-numpy RLE decoder.
_JPEG = {"pylibjpeg": "pylibjpeg + pylibjpeg-libjpeg", "gdcm": "python-gdcm"}
_J2K = {"pylibjpeg": "pylibjpeg + pylibjpeg-openjpeg", "gdcm": "python-gdcm", "pillow": "pillow (built with OpenJPEG)"}
CODEC_PLUGINS: dict[str, dict[str, str]] = {
    U.JPEGBaseline8Bit: {"pillow": "pillow", **_JPEG},
    U.JPEGExtended12Bit: {"pillow": "pillow (8-bit samples only)", **_JPEG},
    U.JPEGLossless: _JPEG,
    U.JPEGLosslessSV1: _JPEG,
    U.JPEGLSLossless: {"pyjpegls": "pyjpegls", **_JPEG},
    U.JPEGLSNearLossless: {"pyjpegls": "pyjpegls", **_JPEG},
    U.JPEG2000Lossless: _J2K,
    U.JPEG2000: _J2K,
    U.HTJ2KLossless: {"pylibjpeg": "pylibjpeg + pylibjpeg-openjpeg"},
    U.HTJ2KLosslessRPCL: {"pylibjpeg": "pylibjpeg + pylibjpeg-openjpeg"},
    U.HTJ2K: {"pylibjpeg": "pylibjpeg + pylibjpeg-openjpeg"},
    U.RLELossless: {"pydicom": "(built in)", "pylibjpeg": "pylibjpeg + pylibjpeg-rle"},
}

# Image Pixel / Modality LUT / VOI LUT attributes a frame's transforms read (copied into a per-frame view).
_VIEW_KEYS = ("PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
              "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
              "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")
_GROUP_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


@dataclass(frozen=True)
class DicomImage:
    """Decoded frames of one DICOM instance.

    `frames[j]` is frame `frame_indices[j]` (0-based) as (H, W) uint8 for monochrome data (windowed, bright =
    dense) or (H, W, 3) uint8 RGB for colour data; `n_frames` is how many frames the instance holds;
    `metadata` holds only SAFE_TAGS keys with JSON-safe values (str, int, float or lists of them)."""
    frames: list[np.ndarray]
    frame_indices: list[int]
    metadata: dict
    n_frames: int


@dataclass(frozen=True)
class DicomFrames:
    """A parsed instance whose frames are not decoded yet: iterate it for (frame index, frame) pairs, one frame
    decoded at a time. `samples` is what decoding `indices` produces, rows x columns x frames x samples per pixel,
    known from the header alone."""
    ds: Dataset
    metadata: dict
    indices: list[int]
    n_frames: int
    samples: int

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in self.indices:
            yield i, _frame(self.ds, i)


def open_image(data: bytes, all_frames: bool = False, limits: Limits | None = None) -> DicomFrames:
    """Part-10 bytes -> DicomFrames of the middle frame (n // 2), or of every frame with `all_frames`, after the
    budget checks: the dataset inflates within `limits.max_dicom_mb`, and its frames decode to at most
    `limits.max_decoded_mpixels` (ResourceExhausted naming the limit and its flag otherwise)."""
    limits = limits or Limits()
    ds = read(data, limits)
    n = _check_image(ds)
    indices = list(range(n)) if all_frames else [n // 2]
    rows, cols, spp = int(ds.Rows), int(ds.Columns), _samples_per_pixel(ds)
    if rows * cols > limits.max_frame_mpixels * 1e6:
        raise limits.refuse("max_frame_mpixels", mpixels(rows * cols), f"a frame of {rows}x{cols}: megapixels")
    samples = rows * cols * spp * len(indices)
    if samples > limits.max_decoded_mpixels * 1e6:
        raise limits.refuse("max_decoded_mpixels", mpixels(samples),
                            f"{len(indices)} frame(s) of {rows}x{cols}, {spp} sample(s) per pixel, decode to "
                            "that many megapixels (send the middle frame only, without all_frames, or fewer "
                            "frames per request)")
    return DicomFrames(ds, safe_metadata(ds), indices, n, samples)


def mpixels(n: int) -> str:
    """`n` pixels (or samples) as megapixels for a message: "432", "0.0324", "1,234.5"."""
    return f"{n / 1e6:,.6g}"


def decode(data: bytes, all_frames: bool = False, limits: Limits | None = None) -> DicomImage:
    """Part-10 bytes -> DicomImage: the middle frame (n // 2) by default, every frame with `all_frames`."""
    img = open_image(data, all_frames, limits)
    return DicomImage([f for _, f in img], img.indices, img.metadata, img.n_frames)


def _samples_per_pixel(ds: Dataset) -> int:
    try:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise InvalidArgument(f"SamplesPerPixel {ds.get('SamplesPerPixel')!r} is not a whole number") from None
    if not 1 <= spp <= 4:
        raise InvalidArgument(f"SamplesPerPixel {spp} is outside 1..4")
    return spp


def safe_metadata(ds: Dataset) -> dict:
    """The SAFE_TAGS present in `ds` (TransferSyntaxUID from its file meta), as JSON-safe values.

    Empty, non-finite or malformed values are left out rather than guessed."""
    out = {}
    for kw in SAFE_TAGS:
        src = ds.file_meta if kw == "TransferSyntaxUID" and hasattr(ds, "file_meta") else ds
        try:
            elem = src[kw] if kw in src else None
            value = None if elem is None else _json_value(elem.value, elem.VR)
        except _BAD_DATA as e:
            LOG.debug("DICOM tag %s left out of the metadata: %s", kw, e)
            continue
        if value is not None:
            out[kw] = value
    return out


def _json_value(v, vr: str):
    if isinstance(v, (list, tuple, MultiValue)):
        items = [_json_scalar(x, vr) for x in v]
        return None if not items or any(x is None for x in items) else items
    return _json_scalar(v, vr)


def _json_scalar(x, vr: str):
    if x is None or isinstance(x, (bytes, Dataset)):
        return None
    if vr in _FLOAT_VRS:
        f = float(x)
        return f if math.isfinite(f) else None
    if vr in _INT_VRS:
        return int(x)
    s = str(x).strip()
    return s or None


def _check_image(ds: Dataset) -> int:
    """The number of frames of an image dataset; InvalidArgument for datasets that hold no decodable image."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = ", ".join(f"{k} {getattr(ds.get(k), 'name', ds.get(k))!r}" for k in ("Modality", "SOPClassUID")
                         if ds.get(k))
        raise InvalidArgument(f"the DICOM dataset has no pixel data ({what or 'not an image'}); only images embed")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if ds.get(k) is None]
    if missing:
        raise InvalidArgument(f"the DICOM dataset's pixel data lacks {', '.join(missing)}")
    if not getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None):
        raise InvalidArgument("the DICOM file meta has no TransferSyntaxUID, so its pixel data cannot be read")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1 or rows * cols > MAX_FRAME_PIXELS:
        raise InvalidArgument(f"frame size {rows}x{cols} is outside 1..{MAX_FRAME_PIXELS:,} pixels")
    raw = ds.get("NumberOfFrames", 1)
    try:
        n = int(raw if raw not in (None, "") else 1)
    except (TypeError, ValueError):
        raise InvalidArgument(f"NumberOfFrames {str(raw)!r} is not a whole number") from None
    if n < 1:
        raise InvalidArgument(f"NumberOfFrames {n} is not positive")
    return n


def _frame(ds: Dataset, index: int) -> np.ndarray:
    """Frame `index` of `ds` -> (H, W) uint8 (monochrome) or (H, W, 3) uint8 (colour)."""
    arr, props = _decode_frame(ds, index)
    pi = str(props.get("photometric_interpretation", ds.PhotometricInterpretation)).strip().upper()
    try:
        if int(props.get("samples_per_pixel", 1)) == 3:
            return _color_to_uint8(arr, pi, int(props.get("bits_stored", 8)))
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)  # uint8 or uint16, by the palette's entry size
            return _scale_bits(rgb, 8 * rgb.dtype.itemsize)
        if pi in ("MONOCHROME1", "MONOCHROME2"):
            out = _gray_to_uint8(arr, _frame_view(ds, index))
            return 255 - out if pi == "MONOCHROME1" else out
    except _BAD_DATA as e:
        raise InvalidArgument(f"frame {index}: cannot apply the {pi} display transforms: {_reason(e)}") from e
    raise InvalidArgument(f"photometric interpretation {pi!r} with {props.get('samples_per_pixel')} samples per "
                          "pixel is not supported")


def _decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray, dict]:
    """Stored values of one frame, YBR_FULL* already converted to RGB, and the pixel properties they have."""
    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InvalidArgument(f"transfer syntax {ts.name!r} ({ts}) has no pixel data decoder in pydicom") from None
    try:
        arr, props = decoder.as_array(ds, index=index, **as_pixel_options(ds))
    except _BAD_DATA as e:
        missing = [pip for plugin, pip in CODEC_PLUGINS.get(ts, {}).items()
                   if plugin not in decoder.available_plugins and plugin != "pydicom"]
        if decoder.is_encapsulated and missing:
            installed = ", ".join(decoder.available_plugins) or "none"
            raise FailedPrecondition(
                f"pixel data in transfer syntax {ts.name!r} ({ts}) could not be decoded with the plugins installed "
                f"here ({installed}): {_reason(e)}; to decode it, pip-install one of: {' | '.join(missing)}") from e
        raise InvalidArgument(f"frame {index}: cannot decode the {ts.name} pixel data: {_reason(e)}") from e
    return arr, props


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes frame `index`'s transforms read, with functional-group values (enhanced multi-frame objects)
    overriding the top level. Elements are copied: pydicom's windowing writes cast values back into its dataset."""
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # VOI/Modality LUT data in OW is read with the file's byte order
    items = [ds]
    shared = ds.get("SharedFunctionalGroupsSequence")
    items += [shared[0]] if shared else []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    items += [per_frame[index]] if per_frame and index < len(per_frame) else []
    for i, item in enumerate(items):
        sources = [item] if i == 0 else [item[s][0] for s in _GROUP_SEQUENCES if item.get(s)]
        for src in sources:
            for kw in _VIEW_KEYS:
                if kw in src:
                    view.add(copy.copy(src[kw]))
    return view


def _gray_to_uint8(arr: np.ndarray, view: Dataset) -> np.ndarray:
    """(H, W) stored values -> (H, W) uint8 through the Modality and VOI transforms (before any inversion)."""
    has_modality = bool(view.get("ModalityLUTSequence")) or (
        view.get("RescaleSlope") is not None and view.get("RescaleIntercept") is not None)
    x = apply_modality_lut(arr, view) if has_modality else arr
    own = x is not arr  # a new array, this function's to overwrite
    if view.get("VOILUTSequence"):
        try:
            return _voi_lut(x, view)
        except _BAD_DATA as e:
            LOG.warning("DICOM VOI LUT ignored (%s); stretching between percentiles instead", _reason(e))
    elif view.get("WindowCenter") is not None and view.get("WindowWidth") is not None:
        try:
            # index 0: of several windows (WindowCenter VM > 1) the first is the one to show by default
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), view, index=0)  # the function's output range
            return _to_uint8(_window(x, view, lo, hi, own), lo, hi, inplace=True)
        except _BAD_DATA as e:
            LOG.warning("DICOM window ignored (%s); stretching between percentiles instead", _reason(e))
    bits = int(view.get("BitsStored") or 0)
    if not has_modality and arr.dtype.kind == "u" and 0 < bits <= 8:
        return _to_uint8(x, 0, 2 ** bits - 1)
    lo, hi = np.percentile(x, PERCENTILES)
    return _to_uint8(x, lo, hi)


def _window(x: np.ndarray, view: Dataset, y_min: float, y_max: float, own: bool) -> np.ndarray:
    """pydicom's apply_windowing(x, view, index=0), its output range y_min..y_max, as a new float64 array (or `x`
    itself when `own`). LINEAR and LINEAR_EXACT are computed here, in place, with pydicom's arithmetic (the same
    values bit for bit, without its masks' fancy-indexed copies: 8 bytes a pixel less than a third of the peak);
    SIGMOID goes to pydicom."""
    func = str(view.get("VOILUTFunction") or "LINEAR").strip().upper()
    if func not in ("LINEAR", "LINEAR_EXACT"):
        return apply_windowing(x, view, index=0)
    c, w = (float(e.value[0] if e.VM > 1 else e.value) for e in (view["WindowCenter"], view["WindowWidth"]))
    if func == "LINEAR":
        c, w = c - 0.5, w - 1
    out = x if own and x.dtype == np.float64 else x.astype(np.float64)
    below, above = out <= c - w / 2, out > c + w / 2
    out -= c
    out /= w
    out += 0.5
    out *= y_max - y_min
    out += y_min
    out[below], out[above] = y_min, y_max
    return out


def _voi_lut(x: np.ndarray, view: Dataset) -> np.ndarray:
    """Apply the first VOI LUT and stretch its output range to 0..255.

    The range is the LUT's own min..max, not 2**bits - 1 from its descriptor: many writers declare 16-bit entries
    and fill 12 bits, which would otherwise display as a dark image."""
    desc = view.VOILUTSequence[0].LUTDescriptor
    entries = int(desc[0]) or 2 ** 16
    lut = apply_voi(np.arange(int(desc[1]), int(desc[1]) + entries), view)  # every entry of the table
    if x.dtype.kind == "f":
        x = np.rint(x).astype(np.int64)  # LUT inputs are integers; a float rescale with slope 1 gives whole numbers
    return _to_uint8(apply_voi(x, view), lut.min(), lut.max())


def _color_to_uint8(arr: np.ndarray, pi: str, bits: int) -> np.ndarray:
    """(H, W, 3) colour samples -> (H, W, 3) uint8 RGB."""
    if pi in ("YBR_FULL", "YBR_FULL_422"):  # the decoder converts these already; kept for raw decoders
        arr = convert_color_space(arr, pi, "RGB")
    elif pi != "RGB":
        raise InvalidArgument(f"colour photometric interpretation {pi!r} is not supported (RGB, YBR_FULL, "
                              "YBR_FULL_422, and YBR_ICT/YBR_RCT in JPEG 2000 are)")
    return _scale_bits(arr, bits)


def _scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned samples of `bits` bits -> uint8 by their full range (colour balance kept, no stretching)."""
    if arr.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(arr)
    return _to_uint8(arr, 0, 2 ** bits - 1)


def _to_uint8(y: np.ndarray, lo: float, hi: float, inplace: bool = False) -> np.ndarray:
    """Map lo..hi linearly to 0..255 (clipped, rounded); a flat range gives zeros. Computed in place on one float64
    copy (on `y` itself, a float64 array, with `inplace`): the arithmetic of (y - lo) * (255 / (hi - lo)) without
    its temporaries. uint8 data already on 0..255 is returned as it is."""
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        return np.zeros(np.shape(y), np.uint8)
    if lo == 0 and hi == 255 and np.asarray(y).dtype == np.uint8:
        return np.ascontiguousarray(y)
    out = y if inplace and y.dtype == np.float64 else np.array(y, dtype=np.float64)
    out -= lo
    out *= 255.0 / (hi - lo)
    np.clip(out, 0, 255, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint8)
