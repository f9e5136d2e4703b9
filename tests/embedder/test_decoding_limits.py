"""The decoding budget (simdex.limits.Limits): what a request's images decode to is checked from their headers before
any pixel is decoded, a deflated DICOM inflates only up to its limit, frames are decoded one at a time, and each
refusal is RESOURCE_EXHAUSTED naming the limit, its flag and the input at fault. (The server-level memory test is
tests/e2e/test_decode_budget.py.)"""
from __future__ import annotations

import io
import weakref
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom import uid as U

from simdex.embedder import dicom
from simdex.embedder.decode import admit, decode_image, decoded_samples, iter_decoded
from simdex.embedder.inputs import embed_raw
from simdex.errors import InvalidArgument, ResourceExhausted
from simdex.limits import Limits

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
LABEL = "images[3] (id 'scan-7')"


def _png(h: int, w: int, channels: int = 3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _file(name: str) -> bytes:
    p = TEST_FILES / name
    if not p.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return p.read_bytes()


def _deflated(rows: int, cols: int) -> bytes:
    """CT_small.dcm's header over rows x cols 8-bit zeros, written by pydicom in Deflated Explicit VR LE."""
    ds = pydicom.dcmread(io.BytesIO(_file("CT_small.dcm")))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 8, 8, 7
    ds.PixelRepresentation = 0
    for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if kw in ds:
            delattr(ds, kw)
    ds.PixelData = bytes(rows * cols)
    ds.file_meta.TransferSyntaxUID = U.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_samples_come_from_the_headers():
    assert decoded_samples(_png(30, 40)) == 30 * 40 * 3
    assert decoded_samples(_png(30, 40, channels=1)) == 30 * 40
    mr = _file("MR_small.dcm")
    assert decoded_samples(mr) == 64 * 64
    rgb = _file("SC_rgb_rle_2frame.dcm")
    assert decoded_samples(rgb) == 100 * 100 * 3 and decoded_samples(rgb, all_frames=True) == 100 * 100 * 3 * 2


def test_a_request_over_the_budget_fails_at_the_item_that_crosses_it():
    """4 images of 10,800 samples against a budget of 30,000: images[2] takes the total to 32,400."""
    limits = Limits(max_decoded_mpixels=0.03)
    items = [_png(60, 60, seed=i) for i in range(4)]
    labels = [f"images[{i}]" for i in range(4)]
    assert admit(items[:2], labels[:2], limits=limits) == 2 * 10_800
    with pytest.raises(ResourceExhausted) as e:
        admit(items, labels, limits=limits)
    assert e.value.item == 2 and e.value.message.startswith("images[2]: ")
    assert "0.0324 is over the server's limit of 0.03" in e.value.message and "--max-decoded-mpixels" in e.value.message


def test_the_budget_is_checked_before_any_pixel_is_decoded():
    """A request whose later item is over the budget fails before its first item is decoded: the iterator raises on
    its first step, and a header that lies (a 1x1 PNG claiming 4000x4000) is refused by what it claims."""
    good = _png(8, 8)
    bomb = _png_claiming(4000, 4000)
    with pytest.raises(ResourceExhausted) as e:
        next(iter_decoded([good, bomb], ["images[0]", "images[1]"], limits=Limits(max_decoded_mpixels=10)))
    assert e.value.item == 1 and "--max-decoded-mpixels" in e.value.message


def _png_claiming(w: int, h: int) -> bytes:
    """A valid 1x1 RGB PNG whose header is rewritten to claim w x h."""
    data = bytearray(_png(1, 1))
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("data", [_png_claiming(3000, 3000), None], ids=["png", "dicom"])
def test_one_frame_over_the_frame_limit_is_refused(data):
    data = data if data is not None else _file("MR_small.dcm")  # 64 x 64 against 0.001 MP
    limits = Limits(max_frame_mpixels=0.001 if data[128:132] == b"DICM" else 4.0)
    with pytest.raises(ResourceExhausted) as e:
        decode_image(data, LABEL, item=3, limits=limits)
    assert e.value.item == 3 and e.value.message.startswith(LABEL + ": ") and "--max-frame-mpixels" in e.value.message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_own_bomb_error_becomes_a_clear_message():
    """Above 2 x Image.MAX_IMAGE_PIXELS Pillow raises DecompressionBombError in open(); it reads as ours does."""
    with pytest.raises(InvalidArgument) as e:
        decode_image(_png_claiming(20_000, 20_000), LABEL, item=3)
    msg = e.value.message
    assert e.value.item == 3 and msg.startswith(LABEL) and "400,000,000 pixels" in msg and "decompression bomb" in msg
    assert "DOS attack" not in msg


def test_all_frames_over_the_budget_names_the_limit():
    rgb = _file("SC_rgb_rle_2frame.dcm")  # 2 frames of 100 x 100 x 3 = 60,000 samples
    assert len(decode_image(rgb, all_frames=True, limits=Limits(max_decoded_mpixels=0.06))) == 2
    with pytest.raises(ResourceExhausted, match="--max-decoded-mpixels") as e:
        decode_image(rgb, LABEL, all_frames=True, item=3, limits=Limits(max_decoded_mpixels=0.05))
    assert e.value.item == 3 and "middle frame" in e.value.message
    assert len(decode_image(rgb, limits=Limits(max_decoded_mpixels=0.05))) == 1  # the middle frame fits


def test_a_deflated_dicom_decodes_as_pydicom_reads_it():
    data = _file("image_dfl.dcm")
    ours = dicom.read(data)
    ref = pydicom.dcmread(io.BytesIO(data))
    assert ours.file_meta.TransferSyntaxUID == U.DeflatedExplicitVRLittleEndian
    assert ours.PixelData == ref.PixelData and sorted(ours.keys()) == sorted(ref.keys())
    (d,) = decode_image(data)
    assert d.rgb.shape == (ref.Rows, ref.Columns, 3)
    assert d.metadata["TransferSyntaxUID"] == U.DeflatedExplicitVRLittleEndian


def test_a_deflated_dicom_inflates_only_up_to_its_limit():
    """2 MB of pixel data deflated to a few KB: refused under a 1 MB limit (inflation stops there), read under 4."""
    data = _deflated(1024, 2048)
    assert len(data) < 20_000
    with pytest.raises(ResourceExhausted) as e:
        decode_image(data, LABEL, item=3, limits=Limits(max_dicom_mb=1))
    assert e.value.item == 3 and "--max-dicom-mb" in e.value.message and "inflates" in e.value.message
    (d,) = decode_image(data, limits=Limits(max_dicom_mb=4))
    assert d.rgb.shape == (1024, 2048, 3) and not d.rgb.any()


def test_the_inflate_limit_is_for_deflated_files_only():
    """An uncompressed file costs about the bytes the caller holds already: the limit does not apply to it."""
    data = _file("MR_small.dcm")
    assert dicom.read(data, Limits(max_dicom_mb=len(data) / 2 ** 20 / 2)).Rows == 64


def test_a_deflated_stream_that_does_not_inflate_is_invalid():
    data = _deflated(64, 64)
    start, _ = dicom_file_meta_end(data)
    with pytest.raises(InvalidArgument, match="does not inflate"):
        decode_image(data[:start] + b"\xff" * 64)


def dicom_file_meta_end(data: bytes):
    from simdex.embedder.dicom_file import _file_meta_end

    return _file_meta_end(data)


class _Probe:
    """An image embedder that records, for each frame it is handed, how many earlier frames are still alive."""
    modality, name, fingerprint, dim = "image", "probe", "sha256:0", 2

    def __init__(self):
        self.alive: list[int] = []

    def embed_frames(self, frames):
        refs = []
        for im in frames:
            self.alive.append(sum(r() is not None for r in refs))
            refs.append(weakref.ref(im))
            del im
        return np.zeros((len(refs), self.dim), np.float32)


def test_embed_raw_holds_one_decoded_frame_at_a_time():
    probe = _Probe()
    images = [_png(40, 50, seed=i) for i in range(3)] + [_file("SC_rgb_rle_2frame.dcm")]
    e = embed_raw(probe, images=images, all_frames=True)
    assert e.item_index.tolist() == [0, 1, 2, 3, 3] and e.frame_index.tolist() == [0, 0, 0, 0, 1]
    assert probe.alive == [0] * 5  # every earlier frame was freed before the next was decoded
