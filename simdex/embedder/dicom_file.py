"""Reading DICOM Part-10 bytes safely: the marker, the file meta group, a bounded inflate of deflated datasets, and
pydicom's parse (pixel data left encoded). Decoding the pixels is simdex.embedder.dicom's part.

A deflated dataset (Deflated Explicit VR Little Endian, PS3.5 A.5) can inflate a thousandfold: pydicom inflates it
whole before anything can look at its size, so this module finds the transfer syntax itself and inflates in a
stream that stops at the server's `max_dicom_mb`."""
from __future__ import annotations

import logging
import struct
import zlib
from io import BytesIO

import pydicom
from pydicom import uid as U
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset

from simdex.errors import InvalidArgument
from simdex.limits import Limits

LOG = logging.getLogger(__name__)

# What a parser of untrusted bytes can raise on bad input; anything else is a bug and propagates.
BAD_DATA = (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError,
            struct.error, NotImplementedError, RuntimeError, OverflowError, ZeroDivisionError)


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part-10 file: a 128-byte preamble followed by b"DICM"."""
    return len(data) >= 132 and bytes(data[128:132]) == b"DICM"


def read(data: bytes, limits: Limits | None = None) -> Dataset:
    """Parse Part-10 bytes (pixel data left encoded). Raises InvalidArgument, or ResourceExhausted when a deflated
    dataset is larger than `limits.max_dicom_mb` once inflated: it is inflated in a stream that stops there, so a
    small file that inflates 1000-fold never costs more than the limit. (Other files cost about their own size,
    which the caller already holds.)"""
    if not is_dicom(data):
        raise InvalidArgument("not a DICOM Part-10 file (no 'DICM' marker at byte 128)")
    limits = limits or Limits()
    try:
        start, ts = _file_meta_end(data)
        if ts == U.DeflatedExplicitVRLittleEndian:
            return _read_deflated(data, start, int(limits.max_dicom_mb * 2 ** 20), limits)
        return pydicom.dcmread(BytesIO(data), force=False)
    except BAD_DATA as e:
        raise InvalidArgument(f"unreadable DICOM dataset: {reason(e)}") from e


# VRs whose explicit-VR element header carries 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _file_meta_end(data: bytes) -> tuple[int, str]:
    """(offset where the dataset starts, TransferSyntaxUID) of a Part-10 file, from its group 0002 elements, which
    PS3.10 writes in explicit VR little endian. Read here, not by pydicom, because pydicom inflates a deflated
    dataset whole, with no bound, as soon as it knows the transfer syntax."""
    pos, ts = 132, ""
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = bytes(data[pos + 4:pos + 6])
        if group != 2:
            break
        if not vr.isalpha() or not vr.isupper():  # implicit VR file meta (not PS3.10): do not guess
            if U.DeflatedExplicitVRLittleEndian.encode() in data[132:pos + 4096]:
                raise InvalidArgument("a deflated DICOM file whose file meta group is not explicit VR little "
                                      "endian (PS3.10 7.1) cannot be read safely")
            return pos, ""
        if vr in _LONG_VRS:
            (length,), head = struct.unpack_from("<I", data, pos + 8), 12
        else:
            (length,), head = struct.unpack_from("<H", data, pos + 6), 8
        if elem == 0x0010:
            ts = bytes(data[pos + head:pos + head + length]).rstrip(b"\0 ").decode("ascii", "replace")
        pos += head + length
    return pos, ts


def _read_deflated(data: bytes, start: int, cap: int, limits: Limits) -> Dataset:
    """A Deflated Explicit VR Little Endian file (PS3.5 A.5): the dataset after byte `start` inflated in a stream
    bounded by `cap` bytes in all, then parsed as explicit VR little endian, as pydicom would parse it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    room = max(cap - start, 0)
    try:
        raw = inflater.decompress(data[start:], room + 1)
        if len(raw) <= room and not inflater.unconsumed_tail:
            raw += inflater.flush()
    except zlib.error as e:
        raise InvalidArgument(f"the deflated DICOM dataset does not inflate: {e}") from e
    if len(raw) > room or inflater.unconsumed_tail:
        raise limits.refuse("max_dicom_mb", f"more than {cap / 2 ** 20:,.1f} MB",
                            f"the deflated DICOM file ({len(data):,} bytes) inflates (inflation stopped there)")
    meta = pydicom.dcmread(BytesIO(data[:start]), force=False)  # the file meta only: nothing follows it here
    body = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(BytesIO(data), body, meta.preamble, meta.file_meta, False, True)
    ds.set_original_encoding(False, True)
    return ds


def reason(e: BaseException) -> str:
    """A one-line reason from a library exception (pydicom's messages span lines)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
