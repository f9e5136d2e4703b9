"""Index descriptions checked before a collection is created: their parameters, their memory, and a rehearsal.

A FAISS factory description is text that FAISS turns into objects, and not every text is safe to keep: some
abort the process (HNSW1, PQ8x0, RR0, NSG*), some allocate gigabytes as they are built (IVF10000000: 1.5 GB;
PQ8x16 at dim 4096: 1 GB of codebooks), some cannot be cloned (L2norm, ITQ: the index could not compact or
restart) and some cost ~800 KB per vector (HNSW100000). `check` refuses all of these with InvalidArgument before
any row is written, in four steps, each cheaper than the next one's risk:

1. parameters, from the text: every integer in 1..MAX_PARAM, code bits at most MAX_NBITS, HNSW M >= 2, no NSG;
2. fixed memory, from the text before FAISS builds anything: what the index holds whatever its number of
   vectors (coarse centroids and lists, codebooks, transform matrices), against `limits.max_index_fixed_mb`;
3. memory per vector beyond the vector's own 4 x dim bytes (graph links, ids, refinement codes), from the built
   index's structure, against `limits.max_index_bytes_per_vector`;
4. a rehearsal through AnnIndex, the way the server uses an index: a tiny instance (list counts and code bits
   shrunk so that a few hundred random vectors train it) is cloned, trained, added to twice, searched with and
   without an id selector (the GPU copy included where there is a GPU), snapshotted and restored, and cloned
   again as a compaction would.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from simdex.errors import InvalidArgument
from simdex.index.ann import AnnIndex, check_description_text, make_faiss_index
from simdex.index.backend import faiss, set_threads_for
from simdex.limits import Limits

LOG = logging.getLogger(__name__)
MAX_PARAM = 1 << 20   # any integer of a description (list counts, M, dims): beyond it FAISS allocates or aborts
MAX_NBITS = 16        # bits per code of PQ, RQ, LSQ and IMI: 2^16 centroids per codebook
LIST_BYTES = 160      # one empty inverted list as FAISS allocates it (measured: IVF1000000 took 153 MB)
SMALL_LISTS = 2       # the rehearsal's list count (IVF), and bits per half (IMI)
SMALL_NBITS = 4       # the rehearsal's code bits
# Quantiser tokens (not the PQ inside OPQ, nor the RQ inside PRQ): PQ16, PQ16x4fs, RQ2x8, PRQ2x2x8, RQ1x8_2x4.
_QUANTISER = re.compile(r"(?<![A-Za-z])(PQ|PRQ|PLSQ|RQ|LSQ)(\d+(?:[x_]\d+)*)")


def check(dim: int, metric: str, desc: str, limits: Limits = Limits()) -> int:
    """Refuse (InvalidArgument) a description the server could not hold or use; otherwise return its estimated
    FAISS bytes per vector beyond the vector's own float32 data. See the module docstring for the steps."""
    make_faiss_index(dim, metric, "Flat")  # dim and metric first, in its words (a Flat allocates nothing)
    check_description_text(desc)
    check_parameters(desc)
    fixed = fixed_bytes(dim, desc)
    if fixed > limits.max_index_fixed_mb * (1 << 20):
        raise limits.refuse_description("max_index_fixed_mb", f"{fixed / (1 << 20):.0f} MB",
                                        f"index {desc!r} at dim {dim} (memory it holds whatever its size)")
    index = make_faiss_index(dim, metric, desc)
    extra = bytes_per_vector(index) - 4 * dim
    del index
    if extra > limits.max_index_bytes_per_vector:
        raise limits.refuse_description("max_index_bytes_per_vector", f"{extra} bytes",
                                        f"index {desc!r} at dim {dim} (memory per vector beyond its float32 data)")
    rehearse(dim, metric, desc)
    return max(0, extra)


def check_parameters(desc: str) -> None:
    """The integers of `desc` in range (InvalidArgument naming the one at fault); kinds simdex cannot hold refused."""
    if "NSG" in desc:
        raise InvalidArgument(f"index {desc!r}: NSG graphs are built once from all their vectors and take no later "
                              "additions; use HNSW (e.g. 'HNSW32') for a graph index")
    for m in re.finditer(r"\d+", desc):
        if not 1 <= int(m[0]) <= MAX_PARAM:
            raise InvalidArgument(f"index {desc!r}: parameter {m[0]} is outside 1..{MAX_PARAM}")
    for m in re.finditer(r"x(\d+)", desc):
        if int(m[1]) > MAX_NBITS:
            raise InvalidArgument(f"index {desc!r}: {m[1]} bits per code is over the maximum of {MAX_NBITS}")
    for m in re.finditer(r"HNSW(\d+)", desc):
        if int(m[1]) < 2:
            raise InvalidArgument(f"index {desc!r}: HNSW needs M >= 2 neighbours per node, got {m[1]}")


def fixed_bytes(dim: int, desc: str) -> int:
    """Upper bound of the bytes `desc` holds whatever its number of vectors, from the text alone (FAISS allocates
    some of it as it builds the index, the rest as it trains): coarse lists and centroids, codebooks, and the
    D x D matrices transforms train or hold, D the largest dimension any stage sees."""
    D = max([dim] + [int(v) for v in re.findall(r"(?:PCAW?R?|RR|Pad|ITQ|OPQ\d+_)(\d+)", desc)])
    total = 8 * D * D * len(re.findall(r"PCA|ITQ|OPQ|RR", desc))
    for m in re.finditer(r"IVF(\d+)(?:_HNSW(\d+))?", desc):
        per_list = LIST_BYTES + 4 * D + (8 * int(m[2]) + 16 if m[2] else 0)  # list, centroid, its graph links
        total += int(m[1]) * per_list
    for m in re.finditer(r"IMI2x(\d+)", desc):
        total += (1 << 2 * int(m[1])) * LIST_BYTES + (1 << int(m[1])) * D * 4
    for m in re.finditer(r"LSH(\d*)", desc):
        total += 4 * D * (int(m[1]) if m[1] else D)  # its rotation, d x nbits
    for m in _QUANTISER.finditer(desc):
        kind, chain = m[1], m[2]
        for part in chain.split("_"):
            nums = [int(v) for v in part.split("x")]
            if kind == "PQ":  # M sub-codebooks of D/M dims: 2^nbits x D floats in all
                total += (1 << (nums[1] if len(nums) > 1 else 8)) * D * 4
            else:  # residual stages: M full-width codebooks (PRQ/PLSQ: per split, of D/splits dims)
                stages, nbits = (nums[-2], nums[-1]) if len(nums) > 1 else (nums[0], 8)
                total += stages * (1 << nbits) * D * 4
    return total


def bytes_per_vector(index) -> int:
    """Estimated bytes FAISS holds per vector added to `index`: codes, ids, graph links, refinement codes.
    (`ix` is a view of `index`, which must stay referenced: the view does not own the C++ object.)"""
    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexRefine):
        return bytes_per_vector(ix.base_index) + bytes_per_vector(ix.refine_index)
    if isinstance(ix, faiss.IndexPreTransform):
        return bytes_per_vector(ix.index)
    if isinstance(ix, faiss.IndexHNSW):
        m0, m1 = ix.hnsw.nb_neighbors(0), ix.hnsw.nb_neighbors(1)
        links = m0 + m1 / max(1, m1 - 1)  # level 0, and about M/(M-1) on the levels above (1 in M nodes per level)
        return bytes_per_vector(ix.storage) + int(4 * links) + 12  # int32 links, level, offset
    if isinstance(ix, faiss.IndexIVF):
        return int(ix.code_size) + 8  # its code and its int64 id in the list
    code = getattr(ix, "code_size", None)
    if code:
        return int(code)
    try:
        return int(ix.sa_code_size())
    except RuntimeError:
        return 4 * ix.d


def small_description(desc: str) -> str:
    """The same kinds as `desc`, with list counts and code bits small enough for a few hundred vectors to train."""
    s = re.sub(r"IVF(\d+)", lambda m: f"IVF{min(int(m[1]), SMALL_LISTS)}", desc)
    s = re.sub(r"IMI2x(\d+)", lambda m: f"IMI2x{min(int(m[1]), SMALL_LISTS)}", s)

    def bits(m: re.Match) -> str:
        if m[1] == "PQ" and "x" not in m[2]:
            return f"PQ{m[2]}x{SMALL_NBITS}"
        return m[1] + re.sub(r"x(\d+)(?=_|$)", lambda b: f"x{min(int(b[1]), SMALL_NBITS)}", m[2])

    return _QUANTISER.sub(bits, s)


def rehearse(dim: int, metric: str, desc: str) -> None:
    """Use a tiny instance of `desc` as the server would (see the module docstring); InvalidArgument naming the
    step FAISS failed at. A kind that trains gets 256 random vectors, enough to train SMALL_* lists and codes
    and OPQ's 256 centroids, or one more than a PCA's output (it finds no more components than it has vectors);
    any other kind, 16."""
    small = small_description(desc)
    step = "building it"
    try:
        ann = AnnIndex(dim, metric, small)
        step = "cloning it"
        faiss.clone_index(make_faiss_index(dim, metric, small))
        n = 16 if ann.trained else max([256] + [int(v) + 1 for v in re.findall(r"PCAW?R?(\d+)", desc)])
        xb = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
        ids, iids = [str(i) for i in range(n)], np.arange(n, dtype=np.int64)
        if not ann.trained:  # as AnnIndex.fresh trains, in fewer iterations: this checks that it trains, no more
            step = "training it"
            index = make_faiss_index(dim, metric, small)
            _quick_training(index)
            set_threads_for(n)
            index.train(xb)
            ann.index, ann.trained = index, True
        step = "adding vectors to it, twice"
        ann.add(iids[: n // 2], ids[: n // 2], xb[: n // 2])
        ann.add(iids[n // 2:], ids[n // 2:], xb[n // 2:])
        step = "searching it"
        ann.knn(xb[:2], 5)
        ann.remove(iids[:1])
        ann.knn(xb[:2], 5)  # with the id selector (or its oversampling) that masks the removed item
        step = "restoring its snapshot"
        AnnIndex(dim, metric, small).restore(ann.snapshot(), iids[1:], ids[1:])
        step = "compacting it (a clone)"
        ann.fresh()
    except InvalidArgument as exc:
        raise InvalidArgument(f"index {desc!r} at dim {dim}: {exc.message}") from None
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        LOG.info("index %r refused: %s failed on a tiny instance (%s): %s", desc, step, small, exc)
        raise InvalidArgument(f"index {desc!r} cannot hold a collection at dim {dim}: FAISS failed {step} "
                              f"({msg})") from None


def _quick_training(index) -> None:
    """One iteration where training iterates (OPQ's rotation, k-means): OPQ64_256 at dim 768 trained in 9.5 s
    with FAISS's defaults, 0.24 s so. (`ix` views `index`, which the caller keeps referenced.)"""
    ix = faiss.downcast_index(index)
    if isinstance(ix, faiss.IndexPreTransform):
        for i in range(ix.chain.size()):
            vt = faiss.downcast_VectorTransform(ix.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = vt.niter_pq = vt.niter_pq_0 = 1
        _quick_training(ix.index)
    elif isinstance(ix, faiss.IndexRefine):
        _quick_training(ix.base_index)
    else:
        for cp in (getattr(ix, "cp", None), getattr(getattr(ix, "pq", None), "cp", None)):
            if isinstance(cp, faiss.ClusteringParameters):
                cp.niter = 1
