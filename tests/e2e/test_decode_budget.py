"""Decoding budgets against a real `simdex serve`: requests of a few hundred KB that decode (or inflate) to gigabytes
are refused from their headers with RESOURCE_EXHAUSTED naming the limit, its flag and the input at fault, and the
server's peak RSS grows by less than 300 MB; a request within the limits is decoded one image at a time, so its
peak does not grow with the number of images.

Peak RSS is the server's VmHWM after it was reset to its current RSS (writing 5 to /proc/PID/clear_refs)."""
from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from proc import Procs
from simdex.clients import Client, SimdexError
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EMB = "densenet-bc-random"   # small (32x32 input), random weights: nothing to download
GROWTH_MB = 300
DEADLINE_S = 60.0            # a clear answer, not a timeout (generous: the machine is shared)


@functools.cache
def _png(side: int, seed: int = 0) -> bytes:
    """A side x side RGB PNG of flat 16x16 blocks: a few KB per megapixel on the wire."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((side, side), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian data element (PS3.5 7.1.2), its value padded to an even length."""
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


@functools.cache
def deflated_dicom(rows: int, cols: int) -> bytes:
    """A Part-10 file in Deflated Explicit VR Little Endian whose 8-bit grey pixel data (rows x cols zeros) is
    deflated in a stream: about 1 KB on the wire per MB inflated, and never whole in this process."""
    sop, inst = b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3.4.5.6.7.8.9"
    meta = (_element(2, 0x0001, b"OB", b"\0\1") + _element(2, 0x0002, b"UI", sop) + _element(2, 0x0003, b"UI", inst)
            + _element(2, 0x0010, b"UI", b"1.2.840.10008.1.2.1.99") + _element(2, 0x0012, b"UI", b"1.2.3.4"))
    head = (_element(8, 0x0016, b"UI", sop) + _element(8, 0x0018, b"UI", inst) + _element(8, 0x0060, b"CS", b"OT")
            + _element(0x28, 0x0002, b"US", struct.pack("<H", 1))
            + _element(0x28, 0x0004, b"CS", b"MONOCHROME2")
            + _element(0x28, 0x0010, b"US", struct.pack("<H", rows))
            + _element(0x28, 0x0011, b"US", struct.pack("<H", cols))
            + b"".join(_element(0x28, e, b"US", struct.pack("<H", v)) for e, v in ((0x100, 8), (0x101, 8), (0x102, 7),
                                                                                    (0x103, 0)))
            + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, rows * cols))
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [z.compress(head)]
    chunk, left = bytes(1 << 20), rows * cols
    while left:
        body.append(z.compress(chunk[:min(left, len(chunk))]))
        left -= min(left, len(chunk))
    body.append(z.flush())
    return (b"\0" * 128 + b"DICM" + _element(2, 0, b"UL", struct.pack("<I", len(meta))) + meta + b"".join(body))


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def peak_growth_mb(pid: int, call) -> tuple[object, float]:
    """(what `call()` returned, how far the server's peak RSS rose above its RSS before the call, MB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb(pid, "VmRSS")
    out = call()
    return out, (_status_kb(pid, "VmHWM") - before) / 1024


def _status(call) -> tuple[str, str, int | None]:
    """(status code name, message, simdex-item) of a call that fails: through the SDK (a SimdexError) or the raw
    stub (a grpc.RpcError), so that Search and Embed reach the server as one request (the SDK would halve them)."""
    try:
        call()
    except SimdexError as e:
        return e.code, e.message, e.item
    except grpc.RpcError as e:
        item = dict(e.trailing_metadata() or ()).get("simdex-item")
        return e.code().name, e.details(), None if item is None else int(item)
    raise AssertionError("the call succeeded")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(process, SDK client, raw stub) of a default-limits server with collection 'scans' on EMB, its embedder
    loaded (two small images stored)."""
    work = tmp_path_factory.mktemp("decode-budget")
    procs = Procs(work)
    try:
        proc = procs.start(work / "data")
        with Client(proc.target, timeout=DEADLINE_S) as c, grpc.insecure_channel(proc.target) as channel:
            c.create_collection("scans", 0, metric="cosine", embedder=EMB)
            c.upsert("scans", ["warm-0", "warm-1"], images=[_png(64, 1), _png(64, 2)])
            yield proc, c, pb_grpc.SimdexStub(channel)
    finally:
        procs.cleanup()


HOSTILE = {
    # the request: 16 PNGs of 6000 x 6000 (36 MP each), about 0.5 MB on the wire, 2.8 GB decoded at once
    "16 PNGs of 6000x6000": (lambda: [_png(6000)] * 16, "--max-frame-mpixels", 0),
    # frames within the frame limit (16 MP), the request over the total: images[8] takes 9 x 48 M samples past 400 M
    "16 PNGs of 4000x4000": (lambda: [_png(4000)] * 16, "--max-decoded-mpixels", 8),
    # 256 MB of pixel data deflated to about 256 KB, the second input
    "a deflated DICOM inflating to 256 MB": (lambda: [_png(64), deflated_dicom(16384, 16384)], "--max-dicom-mb", 1),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("rpc", ["Upsert", "Search", "Embed"])
def test_hostile_decodes_are_refused_from_their_headers(server, case, rpc):
    proc, c, stub = server
    make, flag, item = HOSTILE[case]
    images = make()
    calls = {"Upsert": lambda: c.upsert("scans", [f"h{i}" for i in range(len(images))], images=images),
             "Search": lambda: stub.Search(pb.SearchRequest(collection="scans", k=1, images=images),
                                           timeout=DEADLINE_S),
             "Embed": lambda: stub.Embed(pb.EmbedRequest(embedder=EMB, images=images), timeout=DEADLINE_S)}
    (code, message, at), growth = peak_growth_mb(proc.pid, lambda: _status(calls[rpc]))
    assert code == "RESOURCE_EXHAUSTED", message
    assert flag in message and "over the server's limit" in message, message
    assert at == item and message.startswith(f"images[{item}]"), message
    assert growth < GROWTH_MB, f"{case} via {rpc}: peak RSS grew by {growth:.0f} MB"
    assert c.count("scans") == 2  # nothing was written


def test_images_within_the_limits_are_decoded_one_at_a_time(server):
    """8 RGB PNGs of 4000 x 4000 (48 M samples each, 384 M in all, under the 400 M budget): 370 MB as decoded
    arrays held together, but decoded, preprocessed and dropped one by one the peak stays that of one image."""
    proc, c, _ = server
    images = [_png(4000, seed) for seed in range(8)]
    n, growth = peak_growth_mb(proc.pid, lambda: c.upsert("scans", [f"ok{i}" for i in range(8)], images=images))
    assert n == 8 and c.count("scans") == 10
    assert growth < GROWTH_MB, f"peak RSS grew by {growth:.0f} MB"
