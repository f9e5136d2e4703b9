#!/usr/bin/env python
"""simdex Ray indexing benchmark: images/s of `simdex index --ray local` against the single-process indexer, in one run.

A benchmark, not a test. Run it from the repository root (needs the ray extra):

    .venv/bin/python bench/ray_index.py                                   # densenet-bc-random, 256 JPEGs
    .venv/bin/python bench/ray_index.py --embedders densenet121-random --n 128

Data: `--n` generated JPEGs of `--size` (bench/embed.py's make_jpegs: smooth colour fields plus noise), written to
a temporary folder once. Every run is a `python -m simdex index FOLDER --data DIR --json` process into a fresh data
directory, as a user would run it, one after the other (never two at once on the machine):

  - local-embed and remote-embed: the single-process indexer's two modes (DataLoader workers or the in-process
    service decode; the model runs in the process),
  - ray: `--ray local` (a local Ray runtime with this machine's CPUs: decode tasks of 0.25 CPU, embedding actors of
    one CPU each, upserts from the driver).

"run s" is the indexer's own summary time (from its start to the last acknowledged chunk, Ray's start-up and the
model load included); "process s" adds interpreter start and imports; "pipeline s" is, for Ray, the execution time
of the Ray Data pipeline as Ray Data logs it ("execution finished in S seconds": decode, embed and the driver's
upserts, without the runtime's start-up and the planning), and the run time for the others. On a 2-core machine Ray has no cores to
spread over: what the rows show there is the price of its start-up and of moving each decoded image through the
object store, not the speed-up a cluster gives.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed import make_jpegs, table  # noqa: E402 - bench/embed.py's data and tables

RAY_EXECUTION = re.compile(r"execution finished in ([0-9.]+) seconds")  # Ray Data's log line at the end of a run


def index(folder: Path, work: Path, name: str, embedder: str, batch: int, chunk: int, *mode: str) -> dict:
    """One `simdex index` process into a fresh data directory -> its summary, plus "process_s" (wall seconds)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    data = work / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    cmd = [sys.executable, "-m", "simdex", "index", str(folder), "--collection", "bench", "--embedder", embedder,
           "--data", str(data), "--batch-size", str(batch), "--chunk-size", str(chunk), "--json", "--no-progress",
           *mode]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(work))
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    s = json.loads(r.stdout.strip().splitlines()[-1])
    s["process_s"] = wall
    found = RAY_EXECUTION.findall(r.stderr)
    s["pipeline_s"] = float(found[-1]) if found else s["seconds"]
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedders", nargs="+", default=["densenet-bc-random"])
    ap.add_argument("--n", type=int, default=256, help="generated JPEGs")
    ap.add_argument("--size", default="500x375", help="WxH of the JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64, help="items per upsert transaction")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="simdex-bench-ray-") as tmp:
        work = Path(tmp)
        make_jpegs(work / "jpegs", args.n, w, h)
        print(f"# simdex Ray indexing benchmark\n\n- {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n- {args.n} JPEGs "
              f"{w}x{h}, batch {args.batch}, chunk {args.chunk}; `simdex index --data` processes, one at a time\n",
              flush=True)
        for name in args.embedders:
            rows = []
            for mode, flags in (("local-embed", ["--local-embed"]), ("remote-embed", ["--remote-embed"]),
                                ("ray local", ["--ray", "local"])):
                s = index(work / "jpegs", work, mode.split()[0], name, args.batch, args.chunk, *flags)
                rows.append([mode, f"{s['process_s']:.1f}", f"{s['seconds']:.1f}", f"{args.n / s['seconds']:.1f}",
                             f"{s['pipeline_s']:.1f}", f"{args.n / s['pipeline_s']:.1f}", f"{s['model_seconds']:.1f}"])
            print(f"## {name}\n")
            print(table(["mode", "process s", "run s", "images/s (run)", "pipeline s", "images/s (pipeline)",
                         "model s"], rows) + "\n", flush=True)
        print(f"- load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
