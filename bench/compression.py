#!/usr/bin/env python
"""simdex compression benchmark: bytes per vector against recall@10 for FAISS index kinds, on real activations.

A benchmark, not a test (pytest collects only tests/). Run it from the repository root:

    .venv/bin/python bench/compression.py                        # both models; activations cached in --cache
    .venv/bin/python bench/compression.py --models densenet121 --natural 500

Data: every image embedded by simdex's own embedders (`simdex.embedder.registry.load`, their own preprocessing):
 (a) scikit-learn's bundled digits, all 1,797 (8x8, 0..16) scaled to 0..255 and upsampled (bilinear) to 224x224 RGB;
 (b) photos and medical slices that ship offline inside installed packages: scikit-learn's china.jpg and flower.jpg,
     matplotlib's grace_hopper.jpg and s1045.ima.gz (an MR slice), and the real CT/MR/NM/ultrasound frames among
     pydicom's test files, decoded by `simdex.embedder.decode.decode_image`. Those are only 14 sources, so each image
     is a seeded random augmentation of one source (resized crop of 25-100% of its area, aspect 3:4-4:3, horizontal
     flip, +-20% contrast and brightness): `--natural` of them, sources taken in turn.
`--queries` of all images (half digits, half photos/medical) are held out as queries; the rest are the database.
Neighbours of a photo/medical query are mostly other augmentations of its source: a near-duplicate search in which
the ranking among many close vectors is what compression must keep.

Models: VGG16 fc6 (4096-d) and DenseNet-121 (1024-d) with ImageNet weights when their files are present, else the
seeded random-weight entries (`...-random`); each table says which. Activations are cached in --cache as .npy, written
chunk by chunk, so an interrupted run resumes and later runs skip the embedding (the slow part on a CPU).

Per index description, through simdex's own path: `AnnIndex(dim, "cosine", desc).fresh(train_sample=database)` (the
FAISS factory with simdex's validation, polysemous training off, vectors L2-normalised), `add`,
then `knn` with simdex's default search parameters unless the row says otherwise (nprobe = nlist/8, at least 8;
k_factor 8 for RFlat). `fresh` trains at once on the whole database; a live collection would instead answer exactly
until it holds `min_train_size` vectors (the last column), since these kinds want that many training points.
recall@10 = |top-10 ∩ exact top-10| / 10 against exact float32 search (a cosine Flat AnnIndex: exact squared L2
over the normalised vectors, the ranking of cosine).
Each kind is measured twice: as a simdex cosine collection, and as an "l2" AnnIndex over the same unit vectors built
here by hand. The two columns agree since simdex indexes cosine as squared L2 over unit vectors (|q - x|^2 =
2 - 2 cos); when it used inner product, compressed kinds lost much recall: PCA subtracts the mean, which changes
inner products but not distances, and a code's error moves an l2 distance by about 2 (q - x).e, small for near
neighbours, but an inner product by q.e (PCA256 on DenseNet activations: 0.05 as inner product, 0.99 as l2). The l2
index reuses the cosine index's trained PCA/OPQ matrices (FAISS trains them without a metric).
Bytes: "code" is what one vector is compressed to; "resident" is measured: (serialised size after add - serialised
size of the trained empty index) / n, so it includes IVF's 8-byte ids and RFlat's full float32 copy; "fixed" is the
trained empty index (PCA/OPQ matrices, codebooks, centroids). simdex's own id maps (about 8 bytes plus the external
id string per vector) come on top for every kind. ms/query: median of single-query `knn` calls (one OpenMP thread,
as simdex serves single queries), on a shared 2-core machine: compare rows, not machines.
"""
from __future__ import annotations

import os

from simdex.defaults import quiet_openmp

quiet_openmp()  # before torch/faiss load: idle OpenMP threads sleep instead of spinning
# numpy's own OpenBLAS spins its threads: on 2 shared cores one 1024x1024 SVD took 25 s with them, 3.7 s without
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

LOG = logging.getLogger("bench.compression")
K = 10
SIZE = 224
CHUNK = 32  # images per cached part file (one embedder batch)
DATA_VERSION = "v1"  # bump when the image generation changes: the cache keys carry it
PHOTOS = [("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("matplotlib", "grace_hopper.jpg")]
DICOMS = ["693_J2KI.dcm", "CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "MR_small.dcm",
          "examples_jpeg2k.dcm", "examples_overlay.dcm", "examples_palette.dcm", "examples_ybr_color.dcm#0",
          "examples_ybr_color.dcm#15"]


# ---- images ----------------------------------------------------------------------------------------------
def upsample_digit(img: np.ndarray) -> np.ndarray:
    """One (8, 8) digit, values 0..16 -> (224, 224, 3) uint8 (bilinear)."""
    grey = Image.fromarray(np.clip(img * (255 / 16), 0, 255).astype(np.uint8))
    return np.repeat(np.asarray(grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR))[:, :, None], 3, axis=2)


def load_sources() -> list[tuple[str, np.ndarray]]:
    """The offline photos and medical frames, each (H, W, 3) uint8; missing ones are skipped with a warning."""
    import matplotlib
    import pydicom
    import sklearn.datasets

    from simdex.embedder.decode import decode_image

    dirs = {"sklearn": Path(sklearn.datasets.__file__).parent / "images",
            "matplotlib": Path(matplotlib.get_data_path()) / "sample_data",
            "pydicom": Path(pydicom.data.__file__).parent / "test_files"}
    out = []
    for pkg, name in PHOTOS + [("pydicom", d) for d in DICOMS]:
        fname, _, frame = name.partition("#")
        try:
            frames = decode_image((dirs[pkg] / fname).read_bytes(), name, all_frames=bool(frame))
            out.append((name, frames[int(frame or 0)].rgb))
        except Exception as exc:  # noqa: BLE001 - a source this machine cannot read is skipped, not fatal
            LOG.warning("source %s/%s skipped: %s", pkg, name, exc)
    try:  # matplotlib's MR slice: raw big-endian uint16, 256x256
        raw = np.frombuffer(gzip.decompress((dirs["matplotlib"] / "s1045.ima.gz").read_bytes()), ">u2")
        a = raw.reshape(256, 256).astype(np.float64)
        a = np.clip(a / max(np.percentile(a, 99.5), 1.0), 0, 1)
        out.append(("s1045.ima", np.repeat((a * 255).astype(np.uint8)[:, :, None], 3, axis=2)))
    except Exception as exc:  # noqa: BLE001
        LOG.warning("source s1045.ima.gz skipped: %s", exc)
    if len(out) < 2:
        raise SystemExit(f"only {len(out)} photo/medical source image(s) could be read; need at least 2")
    return out


def augment(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> (224, 224, 3) uint8: random resized crop, flip, contrast/brightness jitter."""
    h, w = src.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.25, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = min(h, w), min(h, w)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    a = (a - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-25, 25)
    return np.ascontiguousarray(np.clip(a, 0, 255).astype(np.uint8))


@dataclass
class ImageSet:
    """A named, deterministic list of images generated on demand (so a resumed run makes the same ones)."""
    tag: str
    n: int
    make: Callable[[int], np.ndarray]  # i -> (224, 224, 3) uint8
    limit: int = 1 << 62  # how many images the set can make at most

    def __call__(self, i: int) -> np.ndarray:
        return self.make(i)


def image_sets(n_natural: int, seed: int) -> list[ImageSet]:
    from sklearn.datasets import load_digits

    digits = load_digits().images
    sources = load_sources()

    def natural(i: int) -> np.ndarray:
        return augment(sources[i % len(sources)][1], np.random.default_rng([seed, i]))

    return [ImageSet(f"digits-{DATA_VERSION}", len(digits), lambda i: upsample_digit(digits[i]),
                     len(digits)),
            ImageSet(f"natural{len(sources)}-s{seed}-{DATA_VERSION}", n_natural, natural)]


# ---- activations, cached -----------------------------------------------------------------------------------
def embed_cached(emb, images: ImageSet, cache: Path) -> np.ndarray:
    """(images.n, emb.dim) float32 activations. Cached in cache/NAME-PRECISION-TAG.parts/ as one .npy per CHUNK
    images, written atomically: an interrupted run resumes, and a larger or smaller `n` reuses every chunk already
    computed. The precision (fp32 or bf16, `emb.precision`) is in the key: the two paths give other vectors."""
    parts = cache / f"{emb.name}-{emb.precision}-{images.tag}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    starts = range(0, images.n, CHUNK)
    todo = [s for s in starts if not (parts / f"{s:06d}.npy").exists()]
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), initial=len(starts) - len(todo), unit="chunk", file=sys.stderr,
                   desc=f"embed {images.tag} with {emb.name} ({CHUNK} images a chunk)", mininterval=10)
        for s in todo:
            # whole chunks even past n (when the set allows), so the chunk means the same images for every n
            end = min(s + CHUNK, images.limit)
            y = emb.embed_images([images(i) for i in range(s, end)])
            tmp = parts / f"{s:06d}.tmp.npy"
            np.save(tmp, y)
            tmp.replace(parts / f"{s:06d}.npy")
            bar.update(1)
        bar.close()
    return np.concatenate([np.load(parts / f"{s:06d}.npy") for s in starts])[: images.n]


def pick_embedder(name: str):
    """The embedder `name` with its pretrained weights, or its `-random` entry when the weights file is missing."""
    from simdex.embedder import registry

    if registry.weights_present(name):
        return registry.load(name), f"`{name}` (pretrained ImageNet weights)"
    where = registry.EmbedderPool().where(name)
    return registry.load(f"{name}-random"), (f"`{name}-random` (**random weights**: {where} is not on this "
                                             "machine)")


# ---- the index kinds ---------------------------------------------------------------------------------------
def descriptions(d: int, n_db: int) -> list[tuple[str, list[dict]]]:
    """(factory description, [search params per row]) for a d-dimensional database of n_db vectors."""
    nlist = 2 ** int(math.log2(max(n_db // 39, 1)))  # FAISS wants >= 39 training points per centroid
    opq = "OPQ64,PQ64" if d <= 1024 else "OPQ64_256,PQ64"  # a 4096x4096 OPQ rotation: see the docstring of main
    return [
        ("Flat", [{}]), ("SQfp16", [{}]), ("SQ8", [{}]), ("PCA256,Flat", [{}]), ("PCA256,SQ8", [{}]),
        ("PQ64", [{}]), (opq, [{}]), ("PQ64,RFlat", [{}]), ("PQ64x4fs,RFlat", [{}]),
        (f"IVF{nlist},PQ64", [{}]),
        (f"IVF{nlist},PQ64,RFlat", [{}, {"k_factor": 16}, {"nprobe": nlist // 2, "k_factor": 16}]),
    ]


def code_bytes(index) -> int:
    """Bytes of one vector's code in the innermost index (IVF: without its list number or id)."""
    from simdex.index.ann import _core

    core = _core(index)
    return int(core.code_size) if hasattr(core, "code_size") else 4 * index.d


def nbytes(index) -> int:
    from simdex.index.ann import faiss

    return int(faiss.serialize_index(index).size)


def recall(P: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-query |P ∩ gt| / k for (nq, k) position arrays."""
    return np.array([len(set(p[p >= 0].tolist()) & set(g.tolist())) / gt.shape[1] for p, g in zip(P, gt)])


def trained(desc: str, xb: np.ndarray, opq_niter: int):
    """An empty cosine AnnIndex of kind `desc` trained on xb: `AnnIndex.fresh(train_sample=xb)`, except that an OPQ
    rotation runs `opq_niter` iterations instead of FAISS's 50 (its training is otherwise what simdex does)."""
    from simdex.index.ann import AnnIndex, faiss, make_faiss_index
    from simdex.index.backend import set_threads_for

    ann = AnnIndex(xb.shape[1], "cosine", desc)
    if not desc.startswith("OPQ"):
        return ann.fresh(train_sample=xb)
    index = make_faiss_index(xb.shape[1], "cosine", desc)
    faiss.downcast_VectorTransform(index.chain.at(0)).niter = opq_niter
    set_threads_for(len(xb))
    index.train(ann._prep(xb))
    ann.index, ann.trained = index, True
    return ann


def trained_l2(desc: str, cos, xb_unit: np.ndarray):
    """The same kind as an "l2" AnnIndex, for unit vectors (same exact ranking as cosine). A PCA/OPQ pre-transform is
    copied from the trained cosine index `cos` (FAISS trains them without any metric) and only the index under it
    is trained again; other kinds train from scratch."""
    from simdex.index.ann import AnnIndex, _no_polysemous_training, faiss

    ann = AnnIndex(xb_unit.shape[1], "l2", desc)
    if not isinstance(cos.index, faiss.IndexPreTransform):
        return ann.fresh(train_sample=xb_unit)
    index = faiss.deserialize_index(faiss.serialize_index(cos.index))  # the trained chain + an index we replace
    chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
    x = xb_unit
    for vt in chain:
        x = vt.apply(x)
    inner = faiss.index_factory(x.shape[1], desc.split(",", 1)[1], faiss.METRIC_L2)
    _no_polysemous_training(inner)
    inner.train(np.ascontiguousarray(x, dtype=np.float32))
    inner.this.disown()  # the pre-transform owns (and frees) its index from now on
    index.index = inner
    ann.index, ann.trained = index, True
    return ann


def filled(ann, xb: np.ndarray):
    """Add xb to the trained, empty `ann`: -> (fixed bytes, resident bytes per vector)."""
    fixed = nbytes(ann.index)
    ann.add(np.arange(len(xb), dtype=np.int64), [str(i) for i in range(len(xb))], xb)
    return fixed, (nbytes(ann.index) - fixed) / len(xb)


def knobs_of(desc: str, p, opq_niter: int) -> str:
    from simdex.index.ann import DEFAULT_K_FACTOR, default_nprobe

    knobs = []
    if "IVF" in desc:
        knobs.append(f"nprobe {p.nprobe or default_nprobe(int(desc.split('IVF')[1].split(',')[0]))}")
    if "RFlat" in desc:
        knobs.append(f"k_factor {p.k_factor or DEFAULT_K_FACTOR}")
    if desc.startswith("OPQ"):
        knobs.append(f"OPQ niter {opq_niter} (FAISS: 50)")
    return ", ".join(knobs) or "—"


def bench_desc(desc: str, rows: list[dict], xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, q_digit: np.ndarray,
               opq_niter: int):
    """Train, fill and search one kind as a simdex cosine collection and as a hand-built "l2" AnnIndex over the
    same unit vectors; one result dict per search-parameter row."""
    from simdex.index.ann import min_train_size
    from simdex.types import SearchParams

    t0 = time.perf_counter()
    cos = trained(desc, xb, opq_niter)
    t_train = time.perf_counter() - t0
    fixed, resident = filled(cos, xb)
    unit = cos._prep(xb)
    l2 = trained_l2(desc, cos, unit)
    filled(l2, unit)
    xq_unit = cos._prep(xq)
    out = []
    for extra in rows:
        p = SearchParams(**extra)
        r = recall(cos.knn(xq, K, p)[1], gt)
        r2 = recall(l2.knn(xq_unit, K, p)[1], gt)
        lat = []
        for i in range(len(xq)):
            t0 = time.perf_counter()
            cos.knn(xq[i:i + 1], K, p)
            lat.append(time.perf_counter() - t0)
        out.append({"desc": desc, "knobs": knobs_of(desc, p, opq_niter), "code": code_bytes(cos.index),
                    "resident": resident, "fixed_mb": fixed / 2**20, "recall": r.mean(), "recall_l2": r2.mean(),
                    "split": f"{r[q_digit].mean():.2f} · {r[~q_digit].mean():.2f}",
                    "split_l2": f"{r2[q_digit].mean():.2f} · {r2[~q_digit].mean():.2f}",
                    "train_s": t_train, "ms": 1e3 * float(np.median(lat)),
                    "min_train": min_train_size(desc, xb.shape[1])})
    return out


# ---- report ------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def structure(x: np.ndarray, rng: np.random.Generator) -> str:
    """A line on how the (normalised) activations are spread: what makes them easy or hard to compress."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    i, j = rng.integers(0, len(x), (2, 2000))
    cos = float(np.mean(np.sum(xn[i] * xn[j], axis=1)))
    xc = (xn - xn.mean(0)).astype(np.float64)
    ev = np.linalg.eigvalsh(xc @ xc.T if len(xc) < xc.shape[1] else xc.T @ xc)[::-1]  # squared singular values
    var256 = float(ev[:256].sum() / ev.sum())
    zeros = float(np.mean(x == 0))
    return (f"mean cosine of random pairs {cos:.3f}; top-256 principal components hold {var256:.1%} of the centred "
            f"variance; {zeros:.0%} of activations are exactly 0")


def run_model(name: str, sets: list[ImageSet], args, rng_seed: int) -> str:
    emb, weights_line = pick_embedder(name)
    xs = [embed_cached(emb, s, Path(args.cache)) for s in sets]
    x = np.concatenate(xs).astype(np.float32)
    is_digit = np.concatenate([np.full(len(xs[0]), True), np.full(len(xs[1]), False)])
    rng = np.random.default_rng(rng_seed)
    nq_d = args.queries // 2
    q = np.concatenate([rng.choice(np.flatnonzero(is_digit), nq_d, replace=False),
                        rng.choice(np.flatnonzero(~is_digit), args.queries - nq_d, replace=False)])
    db = np.setdiff1d(np.arange(len(x)), q)
    xb, xq, q_digit = np.ascontiguousarray(x[db]), np.ascontiguousarray(x[q]), is_digit[q]
    from simdex.index.ann import AnnIndex

    exact = AnnIndex(x.shape[1], "cosine", "Flat")  # exact float32 squared L2 over unit vectors: cosine's ranking
    exact.add(np.arange(len(xb), dtype=np.int64), [str(i) for i in range(len(xb))], xb)
    gt = exact.knn(xq, K)[1]
    results = []
    for desc, rows in descriptions(x.shape[1], len(xb)):
        if args.index and desc not in args.index:
            continue
        LOG.info("%s: %s", emb.name, desc)
        results += bench_desc(desc, rows, xb, xq, gt, q_digit, args.opq_niter)
    head = ["description", "search params", "code B/vec", "resident B/vec", "fixed MB", "recall@10 cosine collection",
            "recall@10 l2 on unit vectors", "cosine: digits · photo/med", "l2: digits · photo/med", "train s",
            "ms/query", "simdex trains at"]
    body = [[f"`{r['desc']}`", r["knobs"], f"{r['code']:,}", f"{r['resident']:,.0f}", f"{r['fixed_mb']:.2f}",
             f"{r['recall']:.3f}", f"{r['recall_l2']:.3f}", r["split"], r["split_l2"], f"{r['train_s']:.1f}",
             f"{r['ms']:.2f}", f"{r['min_train']:,}"] for r in results]
    return (f"### {name}: {x.shape[1]}-d, weights {weights_line}\n\n"
            f"database {len(xb):,} vectors ({int(is_digit[db].sum()):,} digits, "
            f"{int((~is_digit[db]).sum()):,} photo/medical augmentations), {len(xq)} held-out queries "
            f"({int(q_digit.sum())} digits, {int((~q_digit).sum())} photo/medical), k={K}, metric cosine. "
            f"Activations: {structure(x, rng)}.\n\n" + table(head, body) + "\n")


def main() -> int:
    """OPQ is the one kind not trained exactly as simdex would: FAISS's OPQ rotation runs 50 iterations, each with an
    SVD that took 30-50 s at 1024x1024 on this shared 2-core machine, so the rotation runs --opq-niter iterations
    (default 5, said in the row). At 4096-d an SVD of 4096x4096 costs ~64 times more, so 4096-d rows use
    `OPQ64_256,PQ64` (rotate and reduce to 256-d, FAISS's usual recipe for high dimensions) instead."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vgg16-fc6", "densenet121"],
                    help="embedder names; '-random' is used when the pretrained weights are missing")
    ap.add_argument("--natural", type=int, default=1000, help="photo/medical augmentations to embed (default 1,000)")
    ap.add_argument("--queries", type=int, default=200, help="held-out queries, half digits (default 200)")
    ap.add_argument("--cache", default="/tmp/simdex-compression-cache", help="folder for cached activations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", action="append", help="only these descriptions (repeatable; default all)")
    ap.add_argument("--opq-niter", type=int, default=5, help="OPQ rotation iterations (FAISS default 50; each one "
                    "took 30-50 s at 1024-d on 2 shared cores)")
    ap.add_argument("--embed-only", action="store_true", help="compute and cache the activations, then stop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    sets = image_sets(args.natural, args.seed)
    if args.embed_only:
        for name in args.models:
            emb, line = pick_embedder(name)
            LOG.info("embedding with %s", line)
            for s in sets:
                embed_cached(emb, s, Path(args.cache))
        return 0
    print(f"## Compression: bytes per vector vs recall@{K}\n\n`{' '.join(sys.argv)}` "
          f"(load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n", flush=True)
    for name in args.models:
        print(run_model(name, sets, args, args.seed), flush=True)
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
