"""Bytes per vector of each documented index kind: the FAISS index (serialized, and the resident memory its process
grew by), simdex's own per-item maps, and the database row (SQLite, and PostgreSQL when a URL is given); the
numbers docs/scale-out.md sizes machines with.

Usage: python bench/memory.py [--shapes 100000x128 20000x4096] [--kinds Flat HNSW32 ...] [--pg URL]
       [--ef-construction N]                                              (prints markdown tables)

Each measurement runs in a fresh process, so that the resident growth is its own: the index is built as a
collection builds it (simdex's factory and settings, trained on up to 100,000 of the vectors, filled in upserts of
10,000) from seeded Gaussian data, with 32-character external ids. simdex's maps are what tracemalloc sees the
adds keep (numpy arrays, the id strings, the position dict); FAISS allocates outside it. The database rows are
written by the service itself (`Simdex.upsert`, batches of 5,000, 80-byte metadata) and measured as the SQLite
file's growth (WAL checkpointed) or PostgreSQL's pg_total_relation_size of the tables (TOAST and indexes
included), in a fresh schema dropped afterwards. `{nlist}` and `{m}` in a kind are filled per shape (nlist: 1024
at 100,000 vectors, 256 at 20,000, so that IVF trains; m: dim / 4 sub-quantizers of 4 bits, half a byte per 4
dimensions).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from simdex.defaults import quiet_openmp

quiet_openmp()

import numpy as np  # noqa: E402

KINDS = ["Flat", "HNSW32", "IVF{nlist},Flat", "IVF{nlist},PQ{m}x4fs,RFlat", "IVF{nlist},PQ{m}x4fs", "SQ8,RFlat",
         "SQ8"]
ADD_CHUNK = 10_000
DB_BATCH = 5_000
META = {"study": "1.2.826.0.1.3680043.8.498.1", "series": 7, "modality": "CT", "age": 57}  # 80 bytes as JSON


def rss() -> int:
    """This process's resident bytes now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The most resident bytes this process has had (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def vectors(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)


def ids(a: int, b: int) -> list[str]:
    """External ids a..b-1, 32 characters each, made fresh (as a request brings them)."""
    return [uuid.UUID(int=i).hex for i in range(a, b)]


def kind_for(template: str, n: int, d: int) -> str:
    return template.format(nlist=1024 if n >= 40_000 else 256, m=d // 4)


# ---- children: one measurement each, printed as JSON -----------------------------------------------------------
def measure_index(desc: str, n: int, d: int) -> dict:
    """The FAISS index and simdex maps of one collection of `n` (n, d) vectors of kind `desc`, built as the service
    builds it (AnnIndex: trained on a sample, filled chunk by chunk)."""
    import tracemalloc

    import faiss

    from simdex.index.ann import AnnIndex
    from simdex.service.collection import TRAIN_SAMPLE

    x = vectors(n, d)
    iids = np.arange(n, dtype=np.int64)
    warm = AnnIndex(d, "l2", desc)  # the code paths and thread pools of the kind, loaded before the baseline
    warm.add(iids[:64], ids(0, 64), x[:64])
    del warm
    base, t0 = rss(), time.perf_counter()
    ann = AnnIndex(d, "l2", desc)
    if ann.min_train:
        ann = ann.fresh(x[:TRAIN_SAMPLE])
    t_train = time.perf_counter() - t0
    tracemalloc.start()
    for i in range(0, n, ADD_CHUNK):
        ann.add(iids[i:i + ADD_CHUNK], ids(i, min(n, i + ADD_CHUNK)), x[i:i + ADD_CHUNK])
    maps = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    seconds = time.perf_counter() - t0
    grown, peak = rss() - base, peak_rss() - base
    serialized = len(faiss.serialize_index(ann.index))
    return {"desc": desc, "n": n, "d": d, "serialized": serialized / n, "rss": grown / n, "peak": peak / n,
            "maps": maps / n, "train_s": t_train, "seconds": seconds, "trained": ann.trained}


def measure_rows(n: int, d: int, pg: str) -> dict:
    """Database bytes per item written by the service (Flat collection), and the whole service's resident growth."""
    import sqlalchemy as sa

    from simdex.service.facade import Simdex

    x = vectors(n, d)
    with tempfile.TemporaryDirectory() as tmp:
        url, engine, schema = (None, None, None)
        if pg:
            schema = f"simdex_bench_{uuid.uuid4().hex[:12]}"
            engine = sa.create_engine(pg)
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}"
        try:
            s = Simdex(Path(tmp), url, snapshot_interval=0)
            s.create_collection("c", d)
            empty, base = db_bytes(Path(tmp), engine, schema), rss()
            for i in range(0, n, DB_BATCH):
                part = ids(i, min(n, i + DB_BATCH))
                s.upsert("c", part, x[i:i + DB_BATCH], [META] * len(part))
            grown = rss() - base
            s.close()
            rows = db_bytes(Path(tmp), engine, schema) - empty
        finally:
            if engine is not None:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                engine.dispose()
    return {"db": "postgresql" if pg else "sqlite", "n": n, "d": d, "row": rows / n, "service_rss": grown / n}


def db_bytes(data_dir: Path, engine, schema: str | None) -> int:
    """The database's size: the SQLite file with its WAL, or the PostgreSQL schema's tables with TOAST and indexes."""
    if engine is None:
        return sum(p.stat().st_size for p in data_dir.glob("simdex.db*"))
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = :s AND c.relkind = 'r'"),
            {"s": schema}).scalar())


# ---- the parent: one child per measurement, the tables ---------------------------------------------------------
def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="*", default=["100000x128", "20000x4096"], help="N x D of each run")
    p.add_argument("--kinds", nargs="*", default=KINDS)
    p.add_argument("--pg", default=os.environ.get("SIMDEX_TEST_PG", ""), help="PostgreSQL URL for the row sizes")
    p.add_argument("--ef-construction", type=int, default=0,
                   help="HNSW efConstruction (default: simdex's); it changes build time, not memory")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return run_child(a.child)
    print(f"| kind | n x d | FAISS serialized B/vector | process RSS growth B/vector | peak RSS growth B/vector | "
          f"simdex maps B/vector | train s | build s |\n|---|---|---|---|---|---|---|---|")
    for shape in a.shapes:
        n, d = map(int, shape.split("x"))
        for template in a.kinds:
            r = child("index", kind_for(template, n, d), str(n), str(d), str(a.ef_construction))
            note = "" if r["trained"] else " (untrained: exact)"
            print(f"| `{r['desc']}`{note} | {n:,} x {d} | {r['serialized']:,.0f} | {r['rss']:,.0f} | {r['peak']:,.0f} "
                  f"| {r['maps']:,.0f} | {r['train_s']:.1f} | {r['seconds']:.1f} |", flush=True)
    print("\n| database | n x d | bytes/row | whole service's RSS growth B/vector (Flat) |\n|---|---|---|---|")
    for shape in a.shapes:
        n, d = map(int, shape.split("x"))
        for pg in ([""] + ([a.pg] if a.pg else [])):
            r = child("rows", str(n), str(d), pg or "-")
            print(f"| {r['db']} | {n:,} x {d} | {r['row']:,.0f} | {r['service_rss']:,.0f} |", flush=True)


def run_child(args: list[str]) -> None:
    what, *rest = args
    if what == "index":
        desc, n, d, ef = rest
        if int(ef):
            from simdex.index import ann

            ann.DEFAULT_EF_CONSTRUCTION = int(ef)
        print(json.dumps(measure_index(desc, int(n), int(d))))
    else:
        n, d, pg = rest
        print(json.dumps(measure_rows(int(n), int(d), "" if pg == "-" else pg)))


if __name__ == "__main__":
    main()
