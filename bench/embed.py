#!/usr/bin/env python
"""simdex embedding benchmark: the `simdex index` pipeline against a bare forward loop, and the Embed RPC.

A benchmark, not a test. Run it from the repository root:

    .venv/bin/python bench/embed.py                          # vgg16-fc6-random and densenet121-random, 256 JPEGs
    .venv/bin/python bench/embed.py --embedders densenet121-random --n 128 --modes

Data: `--n` generated JPEGs of `--size` (default 500x375, quality 90; smooth random colour fields plus noise, so
they compress like photographs rather than like noise), written to a temporary folder once per run.

Per embedder, three markdown tables:

 (a) images/s of the whole indexer pipeline (`Indexer` in local-embed mode into a `Client.local` data directory in a
     temporary folder: DataLoader workers read + decode + preprocess, the main process runs the model, a thread
     upserts chunks; wall time from the start of `Indexer.run` to the last acknowledged chunk) next to a bare loop of
     `embedder.forward` over the same images decoded and preprocessed beforehand, at the same batch size. The
     model's busy fraction in the pipeline = time inside forward / wall time of the run (target >= 90%).
 (b) Embed RPC images/s through an in-process gRPC server (`create_server` on 127.0.0.1:0, `Client.embed`) at
     batch 1 and batch 32 (encoded JPEG bytes in; the server decodes, preprocesses and embeds).
 (c) with --modes: `simdex index` local-embed against remote-embed, for an in-process data directory (`--data`) and
     for a `simdex serve` process on this machine (`--target`); the faster is the indexer's default for the case.

Every embedder is loaded once and warmed up (one batch) before anything is timed; the pipeline and the RPC server
share that instance, so model load time is never in the numbers.
"""
from __future__ import annotations

from simdex.defaults import quiet_openmp

quiet_openmp()  # before torch/faiss load: idle OpenMP threads sleep instead of spinning

import argparse  # noqa: E402
import os  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

BUSY_TARGET = 0.90


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def make_jpegs(folder: Path, n: int, w: int, h: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        im = np.clip(im + rng.integers(-12, 13, im.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:05d}.jpg"
        Image.fromarray(im).save(p, quality=90)
        out.append(p)
    return out


def bare_loop(emb, files: list[Path], batch: int) -> float:
    """images/s of emb.forward over pre-decoded, pre-preprocessed tensors (decode time excluded)."""
    import torch

    from simdex.embedder.decode import decode_image

    xs = torch.stack([emb.preprocess(decode_image(p.read_bytes())[0].rgb) for p in files])
    emb.forward(xs[:batch])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(xs), batch):
        emb.forward(xs[s:s + batch])
    return len(xs) / (time.perf_counter() - t)


def pipeline(pool, name: str, folder: Path, work: Path, batch: int, chunk: int, workers: int, remote: bool = False):
    """One local (in-process) indexer run into a fresh data directory; the Summary."""
    from simdex.clients import Client
    from simdex.jobs.indexer import Indexer, IndexOptions

    with Client.local(str(work), snapshot_interval=0, device=pool.device) as c:
        c.embed(name, images=[folder.joinpath("img00000.jpg").read_bytes()])  # the service loads and warms its model
        opts = IndexOptions(name.replace("-", "_"), embedder=name, remote_embed=remote, batch_size=batch,
                            chunk_size=chunk, workers=workers, progress=False, errors_file=str(work / "errors.jsonl"))
        return Indexer(c, opts).run(folder)  # local-embed runs the service's embedder (c.embedder_pool) too


def rpc_rates(pool, name: str, files: list[Path], work: Path, n1: int) -> tuple[float, float]:
    """Embed RPC images/s at batch 1 (n1 calls) and batch 32 (every file), in-process gRPC server."""
    from simdex.clients import Client
    from simdex.service.facade import Simdex
    from simdex.server.app import create_server

    service = Simdex(work, None, snapshot_interval=0, embedders=pool)
    server, port, _ = create_server(service, "127.0.0.1:0")
    server.start()
    data = [p.read_bytes() for p in files]
    try:
        with Client(f"127.0.0.1:{port}") as c:
            c.embed(name, images=data[:1])  # warm-up (channel, decoder)
            t = time.perf_counter()
            for b in data[:n1]:
                c.embed(name, images=[b])
            r1 = n1 / (time.perf_counter() - t)
            m = len(data) // 32 * 32
            t = time.perf_counter()
            for s in range(0, m, 32):
                c.embed(name, images=data[s:s + 32])
            r32 = m / (time.perf_counter() - t)
    finally:
        server.stop(grace=None).wait()
        service.close()
    return r1, r32


def serve_process(work: Path) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "simdex", "serve", "--data", str(work), "--host", "127.0.0.1", "--port", "0",
            "--snapshot-interval", "0"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(work.with_suffix(".log"), "wb"), text=True, env=dict(os.environ))
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"simdex serve did not start: {line!r}; see {work.with_suffix('.log')}")
    return proc, line.split("listening on", 1)[1].strip()


def modes(pool, name: str, folder: Path, work: Path, batch: int, chunk: int, workers: int) -> list[list[str]]:
    """Local-embed vs remote-embed, in-process and against a `simdex serve` process."""
    from simdex.clients import Client
    from simdex.jobs.indexer import Indexer, IndexOptions
    rows = []
    for remote in (False, True):
        s = pipeline(pool, name, folder, work / f"inproc-{remote}", batch, chunk, workers, remote)
        rows.append(["in-process (--data)", s.mode, f"{s.indexed / s.seconds:.2f}"])
    for remote in (False, True):
        (work / f"srv-{remote}").mkdir()
        proc, target = serve_process(work / f"srv-{remote}")
        try:
            with Client(target) as c:
                c.embed(name, images=[folder.joinpath("img00000.jpg").read_bytes()])  # the server loads its model
                opts = IndexOptions(f"m{int(remote)}", embedder=name, remote_embed=remote, batch_size=batch,
                                    chunk_size=chunk, workers=workers, progress=False,
                                    errors_file=str(work / "errors.jsonl"))
                s = Indexer(c, opts, embedder=pool.get(name)).run(folder)
            rows.append(["`simdex serve` process (--target)", s.mode, f"{s.indexed / s.seconds:.2f}"])
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedders", nargs="+", default=["vgg16-fc6-random", "densenet121-random"])
    ap.add_argument("--n", type=int, default=256, help="generated JPEGs")
    ap.add_argument("--size", default="500x375", help="WxH of the JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64, help="items per upsert transaction in the pipeline")
    ap.add_argument("--workers", type=int, default=-1, help="decoding workers (default: the indexer's)")
    ap.add_argument("--rpc-batch1-calls", type=int, default=32, help="Embed calls of one image each")
    ap.add_argument("--modes", action="store_true", help="also compare local-embed and remote-embed (table c)")
    ap.add_argument("--device", help="cpu or cuda (default: the GPU when present)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from simdex.jobs.local_embed import default_workers
    from simdex.embedder.registry import EmbedderPool

    w, h = (int(v) for v in args.size.split("x"))
    workers = default_workers() if args.workers < 0 else args.workers
    with tempfile.TemporaryDirectory(prefix="simdex-bench-embed-") as tmp:
        tmp = Path(tmp)
        files = make_jpegs(tmp / "jpegs", args.n, w, h)
        pool = EmbedderPool(device=args.device)
        dev = pool.get(args.embedders[0]).device
        print(f"# simdex embedding benchmark\n\n- {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, device {dev}"
              + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
              + f", torch threads {torch.get_num_threads()}\n- {args.n} JPEGs of {w}x{h} "
              f"({sum(p.stat().st_size for p in files) / len(files) / 1024:.0f} KiB on average), batch "
              f"{args.batch}, upsert chunks of {args.chunk}, {workers} decoding worker(s)\n", flush=True)
        for name in args.embedders:
            emb = pool.get(name)
            bare = bare_loop(emb, files, args.batch)
            s = pipeline(pool, name, tmp / "jpegs", tmp / f"pipe-{name}", args.batch, args.chunk, workers)
            assert s.indexed == len(files) and s.failed == 0, s
            busy = s.model_seconds / s.seconds
            print(f"## {name} (dim {emb.dim})\n\n### (a) indexer pipeline vs bare forward loop, batch {args.batch}\n")
            print(table(["path", "images/s", "vs bare", "model busy", "target", "met?"], [
                ["bare `forward` loop over pre-decoded tensors", f"{bare:.2f}", "100%", "100%", "", ""],
                [f"indexer pipeline ({workers} decode workers -> model -> upsert)", f"{s.indexed / s.seconds:.2f}",
                 f"{s.indexed / s.seconds / bare:.0%}", f"{busy:.0%}", f">= {BUSY_TARGET:.0%} busy",
                 "yes" if busy >= BUSY_TARGET else "**no**"]]) + "\n", flush=True)
            r1, r32 = rpc_rates(pool, name, files, tmp / f"rpc-{name}", min(args.rpc_batch1_calls, len(files)))
            print("### (b) Embed RPC, in-process gRPC server, JPEG bytes in\n")
            print(table(["batch", "images/s"], [["1", f"{r1:.2f}"], ["32", f"{r32:.2f}"]]) + "\n", flush=True)
            if args.modes:
                print("### (c) `simdex index` modes\n")
                rows = modes(pool, name, tmp / "jpegs", tmp / f"modes-{name}", args.batch, args.chunk, workers)
                print(table(["server", "mode", "images/s"], rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
