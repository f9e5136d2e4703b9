"""Raw input decoding: DICOM (pydicom's shipped test files, and datasets derived from them) and Pillow images.

Expected pixels come from independent numpy oracles (rescale, DICOM linear windowing, percentile stretch, palette
lookup) or from lossless round trips, never from the code under test."""
from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom import uid as U
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder

from simdex.embedder import dicom
from simdex.embedder.decode import MAX_PIXELS, Decoded, decode_image, decode_many, thumbnail_png
from simdex.errors import FailedPrecondition, InvalidArgument, SimdexError

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientAddress", "OtherPatientIDs",
    "OtherPatientNames", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyDescription",
    "SeriesDescription", "StationName", "DeviceSerialNumber",
)
LABEL = "images[3] (id 'scan-7')"


def _path(name: str) -> Path:
    p = TEST_FILES / name
    if not p.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return p


def _read(name: str) -> Dataset:
    return pydicom.dcmread(_path(name))


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing onto 0..255 (the oracle)."""
    c, w = c - 0.5, w - 1
    y = ((x - c) / w + 0.5) * 255
    return np.rint(np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y)))


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint(np.clip((x - lo) / (hi - lo) * 255, 0, 255))


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal but for round-half ties that float evaluation order can tip by one level."""
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.98, (diff.max(), (diff == 0).mean())


def _informative(want: np.ndarray) -> None:
    """An oracle image worth comparing to: not saturated to 0/255 almost everywhere."""
    assert ((want > 0) & (want < 255)).mean() > 0.2


def _one(data: bytes, **kw) -> np.ndarray:
    (im,) = dicom.decode(data, **kw).frames
    return im


def _png(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", **kw)
    return buf.getvalue()


# ---------------------------------------------------------------- DICOM pixels


def test_ct_rescale_then_percentile_stretch_without_window():
    ds = _read("CT_small.dcm")
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) != 0
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, hi = np.percentile(hu, dicom.PERCENTILES)
    want = _stretch(hu, lo, hi)
    _informative(want)
    _close(_one(_path("CT_small.dcm").read_bytes()), want)


def test_ct_window_applies_to_rescaled_values_and_takes_the_first_of_several():
    ds = _read("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, 400], [400, 2000]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    want = _window(hu, 40, 400)
    _informative(want)
    got = _one(_bytes(ds))
    _close(got, want)
    assert np.abs(got.astype(int) - _window(hu, 400, 2000)).mean() > 10  # the second window would look different


@pytest.mark.parametrize("name, bits", [("MR_small.dcm", 16), ("examples_overlay.dcm", 12)])
def test_stored_window_on_16_and_12_bit_data(name, bits):
    ds = _read(name)
    assert int(ds.BitsStored) == bits and "RescaleSlope" not in ds
    c = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)
    w = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth)
    want = _window(ds.pixel_array.astype(np.float64), c, w)
    _informative(want)
    _close(_one(_path(name).read_bytes()), want)


def test_8_bit_data_without_display_transforms_keeps_its_stored_values():
    ds = _read("image_dfl.dcm")
    assert int(ds.BitsStored) == 8 and "WindowCenter" not in ds and "RescaleSlope" not in ds
    np.testing.assert_array_equal(_one(_path("image_dfl.dcm").read_bytes()), ds.pixel_array)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])  # windowed, and percentile-stretched
def test_monochrome1_is_the_inverse_of_monochrome2(name):
    ds = _read(name)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    m2 = _one(_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = _one(_bytes(ds))
    assert m2.std() > 10
    np.testing.assert_array_equal(m1.astype(int), 255 - m2.astype(int))


def test_transfer_syntaxes_of_the_same_image_decode_alike():
    want = _one(_path("MR_small.dcm").read_bytes())
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"):
        data = _path(name).read_bytes()
        ts = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
        if not get_decoder(ts).is_available:
            with pytest.raises(FailedPrecondition):
                dicom.decode(data)
            continue
        np.testing.assert_array_equal(_one(data), want, err_msg=name)


def test_multi_frame_middle_frame_by_default_and_every_frame_on_request():
    data = _path("rtdose.dcm").read_bytes()
    raw = _read("rtdose.dcm").pixel_array.astype(np.float64)
    n = raw.shape[0]
    assert n > 2
    middle = dicom.decode(data)
    assert (middle.n_frames, middle.frame_indices, len(middle.frames)) == (n, [n // 2], 1)
    every = dicom.decode(data, all_frames=True)
    assert every.frame_indices == list(range(n)) and len(every.frames) == n
    np.testing.assert_array_equal(middle.frames[0], every.frames[n // 2])
    for i, f in enumerate(every.frames):  # each frame stretched by its own percentiles
        lo, hi = np.percentile(raw[i], dicom.PERCENTILES)
        _close(f, _stretch(raw[i], lo, hi))


def test_colour_multi_frame_through_decode_image():
    data = _path("examples_ybr_color.dcm").read_bytes()
    ds = _read("examples_ybr_color.dcm")
    n = int(ds.NumberOfFrames)
    (mid,) = decode_image(data)
    frames = decode_image(data, all_frames=True)
    assert [d.frame for d in frames] == list(range(n)) and mid.frame == n // 2
    np.testing.assert_array_equal(mid.rgb, frames[n // 2].rgb)
    np.testing.assert_array_equal(mid.rgb, ds.pixel_array[n // 2])  # pydicom's own YBR -> RGB


def test_enhanced_multi_frame_uses_functional_group_rescale_and_windows():
    rng = np.random.default_rng(0)
    x = rng.integers(-200, 600, (3, 24, 32)).astype(np.int16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = U.EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = U.generate_uid()
    ds.Modality = "CT"
    ds.set_pixel_data(x, "MONOCHROME2", 16)
    shared, pvt = Dataset(), Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 2, -100, "HU"
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    windows = [(100, 400), (300, 800), (500, 1200)]
    ds.PerFrameFunctionalGroupsSequence = []
    for c, w in windows:
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = c, w
        item.FrameVOILUTSequence = [voi]
        ds.PerFrameFunctionalGroupsSequence.append(item)
    got = dicom.decode(_bytes(ds), all_frames=True).frames
    for i, (c, w) in enumerate(windows):
        want = _window(x[i] * 2.0 - 100, c, w)
        _informative(want)
        _close(got[i], want)


def test_palette_colour_through_its_lookup_tables():
    ds = _read("examples_palette.dcm")
    assert list(ds.RedPaletteColorLookupTableDescriptor) == [256, 0, 16]
    px = ds.pixel_array
    want = np.stack([np.frombuffer(getattr(ds, f"{c}PaletteColorLookupTableData"), "<u2")[px]
                     for c in ("Red", "Green", "Blue")], axis=-1)
    got = _one(_path("examples_palette.dcm").read_bytes())
    _close(got, np.rint(want / 257.0))
    assert got.std(axis=-1).mean() > 1  # colour, not grey


def test_rgb_8_and_16_bit_and_ybr_data():
    rgb8 = _one(_path("SC_rgb_rle.dcm").read_bytes())
    np.testing.assert_array_equal(rgb8, _read("SC_rgb_rle.dcm").pixel_array)
    raw16 = _read("SC_rgb_rle_16bit.dcm").pixel_array
    np.testing.assert_array_equal(_one(_path("SC_rgb_rle_16bit.dcm").read_bytes()), np.rint(raw16 / 257.0))
    ybr = _one(_path("SC_ybr_full_422_uncompressed.dcm").read_bytes())  # the same picture, chroma-subsampled
    assert np.abs(ybr.astype(int) - rgb8).mean() < 2


# ---------------------------------------------------------------- DICOM errors


def _no_plugin(name: str):
    data = _path(name).read_bytes()
    ts = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(ts).available_plugins:
        pytest.skip(f"a {ts.name} decoding plugin is installed")
    return data


def test_jpeg_ls_without_plugin_names_the_syntax_and_the_plugins_to_install():
    data = _no_plugin("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(FailedPrecondition) as e:
        decode_image(data, LABEL)
    msg = e.value.message
    assert msg.startswith(LABEL) and "JPEG-LS Lossless" in msg
    assert "pylibjpeg-libjpeg" in msg and "python-gdcm" in msg and "pyjpegls" in msg


def test_jpeg2000_without_plugin_names_the_plugins_to_install():
    decoder = get_decoder(U.JPEG2000Lossless)
    if set(decoder.available_plugins) - {"pillow"}:
        pytest.skip("a JPEG 2000 plugin other than Pillow is installed")
    removed = "pillow" in decoder.available_plugins
    if removed:  # simulate an installation without Pillow's OpenJPEG codec
        decoder.remove_plugin("pillow")
    try:
        with pytest.raises(FailedPrecondition) as e:
            decode_image(_path("MR_small_jp2klossless.dcm").read_bytes(), LABEL)
    finally:
        if removed:
            decoder.add_plugin("pillow", ("pydicom.pixels.decoders.pillow", "_decode_frame"))
    assert "JPEG 2000" in e.value.message and "pylibjpeg-openjpeg" in e.value.message
    assert e.value.message.startswith(LABEL)


@pytest.mark.parametrize("name, words", [("rtplan.dcm", "no pixel data"), ("MR_truncated.dcm", "less than expected"),
                                         ("badVR.dcm", "NumberOfFrames")])
def test_datasets_without_a_decodable_image_are_invalid(name, words):
    with pytest.raises(InvalidArgument) as e:
        decode_image(_path(name).read_bytes(), LABEL)
    assert e.value.message.startswith(LABEL) and words in e.value.message


# ---------------------------------------------------------------- DICOM metadata


def _readable_test_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.glob("*.dcm") if dicom.is_dicom(p.read_bytes()[:132]))


def _check_safe(meta: dict) -> None:
    assert set(meta) <= set(dicom.SAFE_TAGS)
    assert not set(meta) & set(IDENTIFYING)
    json.dumps(meta, allow_nan=False)  # JSON-safe, no NaN


def test_the_allow_list_holds_no_identifying_keyword():
    assert not set(dicom.SAFE_TAGS) & set(IDENTIFYING)
    assert all(pydicom.datadict.tag_for_keyword(k) for k in dicom.SAFE_TAGS)  # real DICOM keywords


def test_no_identifying_tag_ever_leaves_across_every_test_file():
    files = _readable_test_files()
    assert len(files) > 20
    decoded = 0
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        _check_safe(dicom.safe_metadata(ds))
        try:
            out = decode_image(p.read_bytes(), p.name)
        except SimdexError:
            continue
        decoded += 1
        for d in out:
            _check_safe(d.metadata)
    assert decoded > 20


def test_identifying_values_do_not_appear_anywhere_in_the_metadata():
    ds = _read("CT_small.dcm")
    secrets = {"PatientName": "Doe^Jane", "PatientID": "MRN-884422", "PatientBirthDate": "19610203",
               "InstitutionName": "St Example Hospital", "AccessionNumber": "ACC-5511",
               "ReferringPhysicianName": "Who^Doctor", "StudyDescription": "Jane Doe chest follow-up",
               "OtherPatientIDs": "ALT-7731", "StudyDate": "20240102"}
    for k, v in secrets.items():
        setattr(ds, k, v)
    (d,) = decode_image(_bytes(ds), LABEL)
    _check_safe(d.metadata)
    text = json.dumps(d.metadata)
    assert not [v for v in secrets.values() if v in text]


def test_metadata_values_are_typed_like_their_tags():
    ds = _read("CT_small.dcm")
    meta = dicom.safe_metadata(ds)
    assert meta["Modality"] == "CT" and meta["Rows"] == 128 and meta["Columns"] == 128
    assert meta["PixelSpacing"] == [float(v) for v in ds.PixelSpacing]
    assert meta["RescaleIntercept"] == float(ds.RescaleIntercept)
    assert meta["TransferSyntaxUID"] == U.ExplicitVRLittleEndian
    assert meta["StudyInstanceUID"] == ds.StudyInstanceUID
    assert isinstance(meta["SeriesNumber"], int)
    assert dicom.safe_metadata(_read("examples_overlay.dcm"))["WindowCenter"] == [450.0, 200.0]


# ---------------------------------------------------------------- Pillow images and errors


def test_decode_image_gives_grey_dicom_three_equal_channels():
    data = _path("MR_small.dcm").read_bytes()
    (d,) = decode_image(data)
    assert isinstance(d, Decoded) and d.rgb.shape == (64, 64, 3) and d.rgb.dtype == np.uint8 and d.frame == 0
    for ch in range(3):
        np.testing.assert_array_equal(d.rgb[..., ch], _one(data))
    assert d.metadata["Modality"] == "MR"


def test_png_rgb_and_grey_round_trip_exactly():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (d,) = decode_image(_png(rgb))
    np.testing.assert_array_equal(d.rgb, rgb)
    assert d.metadata == {} and d.frame == 0 and d.rgb.flags.c_contiguous
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    (g,) = decode_image(_png(grey))
    np.testing.assert_array_equal(g.rgb, np.repeat(grey[..., None], 3, axis=2))


def test_16_bit_png_is_scaled_not_clipped():
    a = (np.arange(32 * 64).reshape(32, 64) * 32).astype(np.uint16)
    (d,) = decode_image(_png(a))
    want = np.rint(a / 257.0).astype(np.uint8)
    for ch in range(3):
        np.testing.assert_array_equal(d.rgb[..., ch], want)


def test_jpeg_decodes_close_to_its_source():
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    (d,) = decode_image(buf.getvalue())
    assert d.rgb.shape == rgb.shape and np.abs(d.rgb.astype(int) - rgb).mean() < 3


def test_palette_and_transparent_pngs():
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 4, (10, 12), dtype=np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette(colours.ravel().tolist())
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue())[0].rgb, colours[idx])
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    want = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha))  # composited on white
    got = decode_image(_png(rgba))[0].rgb
    assert np.abs(got.astype(int) - want).max() <= 1


def test_exif_orientation_is_applied():
    rgb = np.random.default_rng(3).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must turn 90 degrees clockwise to stand upright
    (d,) = decode_image(_png(rgb, exif=exif))
    np.testing.assert_array_equal(d.rgb, np.rot90(rgb, k=-1))


def _png_claiming(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to claim w x h (a decompression bomb's header)."""
    data = bytearray(_png(np.zeros((1, 1), np.uint8)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [11_000, 20_000])  # above our 100 MP only, and above Pillow's own refusal too
def test_decompression_bombs_are_refused_before_decoding(side):
    assert side * side > MAX_PIXELS
    with pytest.raises(InvalidArgument) as e:
        decode_image(_png_claiming(side, side), LABEL)
    assert e.value.message.startswith(LABEL) and "decompression bomb" in e.value.message


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 500, b"not an image at all",
    _png(np.full((64, 64, 3), 7, np.uint8))[:60],
    b"\x00" * 128 + b"DICM" + b"\xff" * 64,
], ids=["empty", "zeros", "text", "truncated-png", "dicm-junk"])
def test_bad_bytes_raise_invalid_argument_naming_the_item(data):
    with pytest.raises(InvalidArgument) as e:
        decode_image(data, LABEL)
    assert e.value.message.startswith(LABEL + ": cannot decode")


def test_truncated_png_names_the_truncation():
    rgb = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png(rgb)
    with pytest.raises(InvalidArgument, match="truncated"):
        decode_image(data[: len(data) // 2], LABEL)


# ---------------------------------------------------------------- batches and thumbnails


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_many_decodes_all_or_fails_on_the_first_bad_item(workers):
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (8, 9, 3), dtype=np.uint8) for _ in range(4)]
    items = [_png(a) for a in imgs] + [_path("MR_small.dcm").read_bytes()]
    labels = [f"images[{i}]" for i in range(len(items))]
    out = decode_many(items, labels, workers=workers)
    assert [len(o) for o in out] == [1] * 5
    for a, o in zip(imgs, out):
        np.testing.assert_array_equal(o[0].rgb, a)
    items[2], items[3] = b"broken", b""
    with pytest.raises(InvalidArgument, match=r"^images\[2\]") as e:
        decode_many(items, labels, workers=workers)
    assert e.value.item == 2  # the position travels as data: callers never parse the label out of the message
    with pytest.raises(InvalidArgument, match="labels") as e:
        decode_many(items, labels[:-1])
    assert e.value.item is None  # about the request, not one input


def test_embed_raw_names_the_bad_input_by_index():
    from simdex.embedder import registry
    from simdex.embedder.inputs import embed_raw

    emb = registry.load("densenet-bc-random")
    good = _png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidArgument, match=r"^images\[1\] \(id 'b'\): cannot decode image") as e:
        embed_raw(emb, images=[good, b"junk", b""], ids=["a", "b", "c"])
    assert e.value.item == 1
    with pytest.raises(InvalidArgument, match="embeds images; texts were sent") as e:
        embed_raw(emb, texts=["a sentence"])
    assert e.value.item is None


def test_embed_raw_names_the_bad_text_by_index():
    from types import SimpleNamespace

    from simdex.embedder.inputs import embed_raw

    emb = SimpleNamespace(name="fake-text", modality="text", fingerprint="sha256:0",
                          embed_texts=lambda texts: np.zeros((len(texts), 2), np.float32))
    assert embed_raw(emb, texts=["one", "two"]).vectors.shape == (2, 2)
    with pytest.raises(InvalidArgument, match=r"^texts\[2\]: empty text") as e:
        embed_raw(emb, texts=["one", "two", "  "])
    assert e.value.item == 2


def test_thumbnail_keeps_aspect_and_never_upscales():
    rgb = np.random.default_rng(6).integers(0, 256, (120, 300, 3), dtype=np.uint8)
    im = Image.open(io.BytesIO(thumbnail_png(rgb, max_side=100)))
    assert im.format == "PNG" and im.size == (100, 40)
    small = Image.open(io.BytesIO(thumbnail_png(rgb[:10, :20])))
    np.testing.assert_array_equal(np.asarray(small.convert("RGB")), rgb[:10, :20])
    with pytest.raises(InvalidArgument):
        thumbnail_png(rgb.astype(np.float32))
    with pytest.raises(InvalidArgument):
        thumbnail_png(rgb, max_side=0)
