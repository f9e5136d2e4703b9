"""What the web page's tests share: a stored world of DICOM studies and plain images on a real simdex gRPC server,
the PHI-laden query, and a real uvicorn serving the app on a free loopback port in a thread.

The world: study A (CT, two series of two instances), study B (MR, one series of three), study C (CT, one instance,
markup in its BodyPartExamined), two PNGs without UIDs (one with a script in its id), each stored in three
collections of one embedder that differ by metric (cosine, ip, l2), plus a collection without an embedder. Every
DICOM file, stored or queried, carries identifying tags (PHI) that must never reach the page or the JSON."""
from __future__ import annotations

import io
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMB = "densenet-bc-random"  # small (32x32 input), random weights: fast, nothing to download
METRICS = ("cosine", "ip", "l2")
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-12345", "PatientBirthDate": "19710203",
       "InstitutionName": "Saint Example Hospital", "ReferringPhysicianName": "Smith^John",
       "AccessionNumber": "ACC-998877", "StudyDescription": "Jane follow-up"}
SCRIPT = '<img src=x onerror="window.__pwned=1">'
EVIL_ID = f"png/{SCRIPT}.png"
MARKUP = "<b>LEG</b>"  # a body part (CS, at most 16 characters) that must show as text, never as bold
VIEWER = "http://viewer.example/ui/app/#/studies?StudyInstanceUID={study}"
# (study, series, instances, source file, modality, body part)
LAYOUT = (("A", 1, 2, "CT_small.dcm", "CT", "CHEST"), ("A", 2, 2, "CT_small.dcm", "CT", "CHEST"),
          ("B", 1, 3, "MR_small.dcm", "MR", "HEAD"), ("C", 1, 1, "CT_small.dcm", "CT", MARKUP))


def study_uid(name: str) -> str:
    return f"1.2.826.0.1.3680043.8.498.{ord(name)}"


def series_uid(study: str, series: int) -> str:
    return f"{study_uid(study)}.{series}"


def dicom(src: str, study: str, series: int, n: int, modality: str, body: str, **extra) -> bytes:
    """pydicom's `src` as instance `n` of `series` of `study`, its pixels changed so that every instance differs,
    carrying the PHI tags (and `extra` tags)."""
    import pydicom
    import pydicom.data

    ds = pydicom.dcmread(Path(pydicom.data.__file__).parent / "test_files" / src)
    a = ds.pixel_array.astype(np.int32)
    shift = 7 * n + 29 * series + 53 * (ord(study) - 65)
    a = np.roll(a, shift, axis=1) + (np.arange(a.shape[0])[:, None] * (n + 1) * 3)
    ds.PixelData = np.clip(a, -2000, 3000).astype(ds.pixel_array.dtype).tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid(study), series_uid(study, series)
    ds.SOPInstanceUID = f"{series_uid(study, series)}.{n + 1}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber, ds.InstanceNumber = series, n + 1
    for tag, value in {**PHI, **extra}.items():
        setattr(ds, tag, value)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # MARKUP is not a valid CS value, on purpose
        warnings.simplefilter("ignore", UserWarning)
        ds.Modality, ds.BodyPartExamined = modality, body
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png(seed: int, size=(48, 64)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size[::-1], Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class World:
    root: Path                     # the folder item paths are relative to
    files: dict[str, bytes]        # id (= path) -> bytes
    query: bytes                   # study A series 1 instance 0, with PHI and a script in Manufacturer
    query_id: str                  # the stored item the query's pixels equal
    target: str = ""               # the simdex server's address, set by the fixture that started it


def build(root: Path, client) -> World:
    """Write the world's files under `root` and store them with `client` in one collection per metric."""
    files: dict[str, bytes] = {}
    for study, series, count, src, modality, body in LAYOUT:
        for n in range(count):
            files[f"dcm/{study}{series}-{n}.dcm"] = dicom(src, study, series, n, modality, body)
    files["png/p0.png"], files[EVIL_ID] = png(0), png(1)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel != EVIL_ID:  # the hostile id's file is absent: its card shows the placeholder
            (root / rel).write_bytes(data)
    ids = list(files)
    for metric in METRICS:
        client.create_collection(metric, 0, metric=metric, embedder=EMB, index="Flat")
        client.upsert(metric, ids, images=list(files.values()), metadata=[{"path": i} for i in ids])
    client.create_collection("plain", 4)
    query = dicom("CT_small.dcm", "A", 1, 0, "CT", "CHEST", Manufacturer=SCRIPT)
    return World(root, files, query, "dcm/A1-0.dcm")


class UvicornThread:
    """A real uvicorn serving `app` on a free loopback port, in a daemon thread; `url`; stop() ends it."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
