"""`make demo`: the whole of simdex on data that ships with its dependencies, offline, on CPU.

1. trains a DenseNet-BC on scikit-learn's digits for a few epochs (`simdex train-densenet`; resumes if interrupted),
2. starts a server of its own (or uses --target) with those weights as the `densenet-bc` embedder,
3. writes the digits as PNG files (the training split to index, the held-out split as queries) and indexes them
   with `simdex index`, then prints precision@10 of digit retrieval for the held-out queries,
4. indexes pydicom's sample CT/MR files and writes a lookup page for one CT slice with `simdex lookup`.
Everything lands in --out (default ./demo-data); rerunning skips what is done.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simdex.defaults import quiet_openmp

SIMDEX = [sys.executable, "-m", "simdex"]


def run(*args: str) -> None:
    print("$ simdex " + " ".join(args), flush=True)
    subprocess.run([*SIMDEX, *args], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, epochs: int) -> Path:
    model = out / "densenet-bc-digits.pt"
    if model.exists():
        print(f"model {model} exists: skipping training (delete it to retrain)")
        return model
    args = ["train-densenet", "--sklearn-digits", "--out", str(model), "--epochs", str(epochs), "--batch-size", "32"]
    if Path(str(model) + ".ckpt").exists():
        args.append("--resume")
    run(*args)
    return model


def write_digits(out: Path) -> tuple[Path, Path]:
    """The model's own split: its training images are indexed, its held-out images are the queries."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from simdex.training.densenet import TrainSettings, load_sklearn_digits, split

    index_dir, query_dir = out / "digits" / "index", out / "digits" / "queries"
    if query_dir.exists():
        return index_dir, query_dir
    d = load_digits()
    s = TrainSettings()
    tr, te = split(load_sklearn_digits(), s.holdout, s.seed)
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    for folder, idx in ((index_dir, tr), (query_dir, te)):
        for i in idx:
            p = folder / str(d.target[i]) / f"{i:04d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(p)
    return index_dir, query_dir


def dicom_samples(out: Path) -> Path:
    import pydicom
    import pydicom.data

    from simdex.embedder.decode import decode_image

    folder = out / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(pydicom.data.__file__).parent / "test_files"
    for f in sorted(src.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if getattr(ds, "Modality", "") not in ("CT", "MR"):
                continue
            decode_image(f.read_bytes(), f.name)
        except Exception:  # noqa: BLE001 - the sample folder holds deliberately broken files; keep the good ones
            continue
        shutil.copy(f, folder / f.name)
    return folder


def precision_at_10(target: str, query_dir: Path) -> tuple[float, int]:
    from simdex.clients import Client

    files = sorted(query_dir.rglob("*.png"))
    with Client(target) as c:
        res = c.search("digits", images=[f.read_bytes() for f in files], k=10)
    same = [np.mean([h.split("/")[0] == f.parent.name for h in hits]) for f, hits in zip(files, res.ids)]
    return float(np.mean(same)), len(files)


def main() -> int:
    quiet_openmp()  # before torch loads here (and inherited by the simdex commands it runs)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-data")
    p.add_argument("--epochs", type=int, default=3, help="DenseNet-BC training epochs (about 2 minutes each on 2 idle cores)")
    p.add_argument("--target", help="use this running server (it must serve --weights densenet-bc=THE MODEL)")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = train(out, a.epochs)
    index_dir, query_dir = write_digits(out)
    dicom_dir = dicom_samples(out)
    server = None
    target = a.target
    if not target:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = subprocess.Popen([*SIMDEX, "serve", "--data", str(out / "server"), "--port", str(port),
                                   "--weights", f"densenet-bc={model}"], stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"the demo server did not start: {line!r}")
        print(f"demo server on {target}", flush=True)
    try:
        common = ["--embedder", "densenet-bc", "--weights", str(model), "--target", target]
        run("index", str(index_dir), "--collection", "digits", *common)
        prec, n = precision_at_10(target, query_dir)
        run("index", str(dicom_dir), "--collection", "dicom", *common)
        page = out / "lookup-ct.html"
        run("lookup", str(dicom_dir / "CT_small.dcm"), "--collection", "dicom", "-k", "8", "--html", str(page),
            "--root", str(dicom_dir), "--target", target)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    print()
    print(f"precision@10 of digit retrieval: {prec:.3f} (same-label neighbours among the 10 nearest, {n} held-out "
          f"queries, densenet-bc features)")
    print(f"lookup page for CT_small.dcm: {page}")
    print(f"demo done in {time.time() - t0:.0f} s; data in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
