"""The FAISS side of a collection: an index over positions 0..ntotal-1 and the maps that give them meaning.

Positions are FAISS labels; each holds one internal item id (iid) and its external id. Deleted or replaced
items become tombstones (their position is masked out of every search with an IDSelectorBitmap) until the
collection compacts by rebuilding from the database. Kinds that cannot take a selector (PQ, LSH) are
searched with oversampling and post-filtering instead. Cosine collections store unit vectors under squared L2
(the ranking of cosine) and report cos = 1 - d/2.

Shapes: xb, xq are (n, d) float32; D (nq, k) float32; P (nq, k) int64 positions (-1 for no hit).
"""
from __future__ import annotations

import functools
import logging
import re

import numpy as np

from simdex import trace
from simdex.distances import BIGGER_IS_BETTER, worst
from simdex.errors import InvalidArgument
from simdex.index.backend import faiss, gpu_available, set_threads_for
from simdex.index.rwlock import RWLock
from simdex.types import SearchParams

LOG = logging.getLogger(__name__)
# Cosine collections are indexed as squared L2 over unit vectors (d = 2 - 2 cos, the same ranking) and report
# cos = 1 - d/2. Quantisers and PCA keep neighbours' distances far better than their inner products: with FAISS's
# PCA (which centres the data) inner-product ranking collapsed to recall@10 0.05 on DenseNet activations, against
# 0.99 as L2 (bench/compression.py).
FAISS_METRIC = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_L2}
FAISS_SPACE = {"l2": "l2", "ip": "ip", "cosine": "l2"}  # the metric FAISS itself ranks by
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per centroid
MAX_DIM = 65536
FLAT_KINDS = (faiss.IndexFlat, faiss.IndexFlatL2, faiss.IndexFlatIP)  # exact kinds, holding every vector as is
MAX_DESC_LEN = 256  # characters of an index description (the collections table's index_desc column)


def default_nprobe(nlist: int) -> int:
    # Documented default: an eighth of the lists, at least 8. Recall@10 >= 0.95 on clustered data in tests.
    return min(nlist, max(8, nlist // 8))


DEFAULT_EF_SEARCH = 128
# Graph kinds are built with this efConstruction (FAISS's default is 40). Collections fill chunk by chunk, and a
# graph grown by many add calls lost recall at 40: at 100k x 128, efSearch 128, chunks of 1k arriving cluster by
# cluster reached recall@10 0.73 (0.82 at 80, 0.94 at 160); 320 kept >= 0.975 for every order, chunk size and data
# kind measured (bench/recall_chunks.py, README), at about 5x the graph's insertion time.
DEFAULT_EF_CONSTRUCTION = 320
DEFAULT_K_FACTOR = 8


def min_train_size(desc: str, dim: int) -> int:
    """How many vectors a kind needs before it trains itself (until then exact search answers)."""
    need = 1000
    for m in re.finditer(r"IVF(\d+)", desc):
        need = max(need, MIN_POINTS_PER_CENTROID * int(m.group(1)))
    for m in re.finditer(r"IMI2x(\d+)", desc):
        need = max(need, MIN_POINTS_PER_CENTROID << int(m.group(1)))
    # codebooks of 2^nbits centroids: PQ16, PQ16x4fs, RQ2x8, PRQ2x2x8, LSQ4x6, RQ1x8_2x4 (k-means needs >= 2^nbits)
    for m in re.finditer(r"(?:PQ|RQ|LSQ)(\d+(?:[x_]\d+)*)(fs)?", desc):
        for part in m.group(1).split("_"):
            nums = part.split("x")
            nbits = int(nums[-1]) if len(nums) > 1 else (4 if m.group(2) else 8)
            need = max(need, MIN_POINTS_PER_CENTROID << nbits)
    for m in re.finditer(r"PCAW?R?(\d+)", desc):  # PCA64, PCAW64, PCAR64, PCAWR64
        need = max(need, 2 * dim)
    return need


def check_description_text(desc: str) -> None:
    """Factory characters only, at most MAX_DESC_LEN of them (the collections table's column), no IDMap."""
    if not desc or len(desc) > MAX_DESC_LEN or not re.fullmatch(r"[A-Za-z0-9_,.=x]+", desc) or "IDMap" in desc:
        shown = desc if len(desc) <= 80 else f"{desc[:80]}... ({len(desc)} characters)"
        raise InvalidArgument(f"index {shown!r} is not a FAISS factory description of at most {MAX_DESC_LEN} "
                              "characters such as 'Flat', 'HNSW32' or 'IVF1024,Flat' (IDMap is managed by simdex)")


def make_faiss_index(dim: int, metric: str, desc: str):
    """FAISS factory with our validation; InvalidArgument names what is wrong."""
    if metric not in FAISS_METRIC:
        raise InvalidArgument(f"metric {metric!r} is not one of {sorted(FAISS_METRIC)}")
    if not 1 <= dim <= MAX_DIM:
        raise InvalidArgument(f"dim must be in 1..{MAX_DIM}, got {dim}")
    check_description_text(desc)
    try:
        index = faiss.index_factory(dim, desc, FAISS_METRIC[metric])
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected"
        raise InvalidArgument(f"index {desc!r} is not valid for dim {dim}: {msg}") from None
    _no_polysemous_training(index)
    core = _core(index)
    if isinstance(core, faiss.IndexHNSW):
        core.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
    return index


def _inner(index):
    """The index a Refine or PreTransform wrapper delegates to (None for any other index)."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.downcast_index(index.base_index)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.downcast_index(index.index)
    return None


def _core(index):
    """The innermost index under Refine / PreTransform wrappers: the one that decides how a query is searched."""
    while (inner := _inner(index)) is not None:
        index = inner
    return index


def _no_polysemous_training(index) -> None:
    """The factory turns on polysemous training for PQ kinds; simdex never searches in polysemous mode, and that
    training cost ~15 s of a 17 s `PQ16` training on 12,000 32-d vectors here. Switch it off, also when nested."""
    core = _core(index)
    if isinstance(core, faiss.IndexHNSW):  # HNSW32_PQ8: the PQ is the graph's storage (7 s of a 256-vector training)
        core = faiss.downcast_index(core.storage)
    if hasattr(core, "do_polysemous_training"):
        core.do_polysemous_training = False


def _walk_params(index, p: SearchParams, sel, keep: list):
    """SearchParameters matching the structure of `index` (Refine > PreTransform > IVF | HNSW | other)."""
    if isinstance(index, faiss.IndexRefine):
        out = faiss.IndexRefineSearchParameters(k_factor=float(p.k_factor or DEFAULT_K_FACTOR),
                                                base_index_params=_walk_params(_inner(index), p, sel, keep))
    elif isinstance(index, faiss.IndexPreTransform):
        return _walk_params(_inner(index), p, sel, keep)
    elif isinstance(index, faiss.IndexIVF):
        out = faiss.SearchParametersIVF(nprobe=p.nprobe or default_nprobe(index.nlist))
    elif isinstance(index, faiss.IndexHNSW):
        out = faiss.SearchParametersHNSW(efSearch=p.ef_search or DEFAULT_EF_SEARCH)
    elif sel is None:
        return None  # some kinds (IndexPQ, IndexLSH) refuse any parameters object
    else:
        out = faiss.SearchParameters()
    if sel is not None and not isinstance(index, faiss.IndexRefine):
        out.sel = sel
    keep.append(out)
    return out


def _knobs_of(index) -> frozenset[str]:
    """The SearchParams fields an index of this structure reads (the structure _walk_params follows)."""
    if isinstance(index, faiss.IndexRefine):
        return frozenset({"k_factor"}) | _knobs_of(_inner(index))
    if isinstance(index, faiss.IndexPreTransform):
        return _knobs_of(_inner(index))
    if isinstance(index, faiss.IndexIVF):
        return frozenset({"nprobe"})
    if isinstance(index, faiss.IndexHNSW):
        return frozenset({"ef_search"})
    return frozenset()


@functools.lru_cache(maxsize=1024)
def search_knobs(dim: int, metric: str, desc: str) -> frozenset[str]:
    """The SearchParams fields that collections of kind `desc` use, read once per kind from an empty index of it
    (also while the kind is untrained and searched exactly): the service refuses the others instead of ignoring
    them (efSearch on Flat, nprobe on HNSW)."""
    return _knobs_of(make_faiss_index(dim, metric, desc))


def _is_graph(index) -> bool:
    """HNSW kinds (also under a pre-transform or refinement): every query walks the graph on its own."""
    return isinstance(_core(index), faiss.IndexHNSW)


class AnnIndex:
    """One collection's FAISS index. Thread-safe: searches share the index lock, changes hold it alone."""

    def __init__(self, dim: int, metric: str, desc: str, *, index=None, trained: bool = True, min_train: int = 0):
        """An empty index of kind `desc`. `index` (with its `trained` and the kind's `min_train`) starts it from an
        empty FAISS index of that kind the caller already has, so no template is built (see fresh)."""
        self.dim, self.metric, self.desc = dim, metric, desc
        self.space = FAISS_SPACE.get(metric, metric)
        self.kind = f"{dim}/{metric}:{self.space}/{desc}"  # snapshots of another kind are rebuilt
        if index is None:
            template = make_faiss_index(dim, metric, desc)
            trained = bool(template.is_trained)
            min_train = 0 if trained else min_train_size(desc, dim)
            index = template if trained else faiss.IndexFlat(dim, FAISS_METRIC[metric])
        self.trained, self.min_train = trained, min_train  # min_train > 0: the kind needs training
        self.knobs = search_knobs(dim, metric, desc)
        self.index = index
        self.lock = RWLock()
        self._pos_iid = np.zeros(0, dtype=np.int64)
        self._live = np.zeros(0, dtype=bool)
        self._pos_ext = np.zeros(0, dtype=object)  # external ids by position: hits index it in one numpy step
        self._n = 0
        self._iid_pos: dict[int, int] = {}
        self.n_dead = 0
        self._selectors: dict = {}  # (id(allowed), ntotal, n_dead) -> (allowed, mask, bits, IDSelectorBitmap)
        self._sel_ok = True
        self._gpu = None
        self._gpu_stale = True

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def n_live(self) -> int:
        return self.ntotal - self.n_dead

    def needs_compaction(self) -> bool:
        return self.n_dead > max(1024, self.ntotal // 4)

    def ready_to_train(self) -> bool:
        return not self.trained and self.n_live >= self.min_train

    @property
    def index(self):
        return self._index

    @index.setter
    def index(self, index) -> None:
        """Everything derived from the FAISS index's structure is set here, once per index, not per search."""
        self._index = index
        # Whether stacking concurrent single queries into one FAISS call can share work. Not for graph kinds:
        # there a stacked call runs the same per-query searches one after another on one thread, and only adds
        # the hand-offs between the callers (measured in-process, HNSW32, 8 threads: +45-70 us CPU and +2.5
        # context switches per query).
        self.stacks = not _is_graph(index)
        # The index that holds every vector exactly, by position (a flat index, or a graph's flat storage), which
        # exact searches over a few filtered items read instead of the database; None for other kinds.
        storage = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
        self._flat = storage if type(storage) in FLAT_KINDS else None
        self._plain_params: dict = {}  # SearchParameters of unfiltered searches, one per SearchParams value

    # ---- writes ------------------------------------------------------------------------------------------
    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    def _grow(self, n: int) -> None:
        need = self.ntotal + n
        if need > len(self._pos_iid):
            cap = max(need, 2 * len(self._pos_iid), 1024)
            self._pos_iid = np.resize(self._pos_iid, cap)
            self._pos_ext = np.resize(self._pos_ext, cap)
            live = np.zeros(cap, dtype=bool)
            live[: len(self._live)] = self._live
            self._live = live

    def add(self, iids: np.ndarray, ext_ids: list[str], xb: np.ndarray) -> None:
        """Append (n, d) float32 vectors for internal ids `iids` / external ids `ext_ids`."""
        if not len(iids):
            return
        xb = self._prep(xb)
        with self.lock.write():
            start = self.ntotal
            self._grow(len(iids))
            set_threads_for(len(xb))  # the OpenMP setting sticks to the calling thread
            self.index.add(xb)
            self._pos_iid[start:start + len(iids)] = iids
            self._live[start:start + len(iids)] = True
            self._pos_ext[start:start + len(iids)] = ext_ids
            self._n = start + len(iids)
            for j, iid in enumerate(iids.tolist()):
                self._iid_pos[iid] = start + j
            self._gpu_stale = True

    def remove(self, iids) -> None:
        """Tombstone internal ids (unknown ones are ignored)."""
        with self.lock.write():
            for iid in np.asarray(iids, dtype=np.int64).tolist():
                pos = self._iid_pos.pop(iid, None)
                if pos is not None:
                    self._live[pos] = False
                    self.n_dead += 1

    def fresh(self, train_sample: np.ndarray | None = None) -> "AnnIndex":
        """An empty AnnIndex of the same kind, trained on `train_sample` (or keeping this one's training)."""
        if train_sample is not None:
            index = make_faiss_index(self.dim, self.metric, self.desc)
            set_threads_for(len(train_sample))
            index.train(self._prep(train_sample))
        elif self.trained:
            with self.lock.read():
                index = faiss.clone_index(self.index)
            index.reset()
        else:  # not trained yet: exact search over a flat index until enough vectors exist
            flat = faiss.IndexFlat(self.dim, FAISS_METRIC[self.metric])
            return AnnIndex(self.dim, self.metric, self.desc, index=flat, trained=False, min_train=self.min_train)
        return AnnIndex(self.dim, self.metric, self.desc, index=index, min_train=self.min_train)

    # ---- search ------------------------------------------------------------------------------------------
    def positions(self, iids: np.ndarray) -> np.ndarray:
        get = self._iid_pos.get
        return np.fromiter((p for p in (get(i) for i in iids.tolist()) if p is not None), dtype=np.int64)

    def live_iids(self) -> np.ndarray:
        """(n_live,) int64: the internal ids the index holds and has not tombstoned (in no particular order)."""
        return np.fromiter(self._iid_pos.keys(), dtype=np.int64, count=len(self._iid_pos))

    def mask_of(self, iids: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.ntotal, dtype=bool)
        mask[self.positions(iids)] = True
        return mask

    def ext_ids(self, positions) -> list:
        """The external ids at `positions` (an int array or list; a 2-d array gives one list per row)."""
        return self._pos_ext[positions].tolist()

    def iids_at(self, positions: np.ndarray) -> np.ndarray:
        return self._pos_iid[positions]

    def stored_vectors(self, positions: np.ndarray) -> np.ndarray | None:
        """(m, d) float32 copies of the vectors at `positions` as the index holds them (unit vectors for cosine),
        or None when it does not hold them exactly (compressed or transformed kinds: read the database then)."""
        if self._flat is None:
            return None
        with self.lock.read():
            return self._flat.reconstruct_batch(np.ascontiguousarray(positions, dtype=np.int64))

    def _search_index(self, with_sel: bool):
        if with_sel or not gpu_available():
            return self.index
        if self._gpu_stale:
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
            except RuntimeError as exc:  # kinds without a GPU implementation stay on the CPU
                LOG.info("index %s stays on CPU: %s", self.desc, exc)
                self._gpu = None
            self._gpu_stale = False
        return self._gpu or self.index

    def knn(self, xq: np.ndarray, k: int, params: SearchParams = SearchParams(), allowed: np.ndarray | None = None):
        """Best k live (and `allowed`, a bool mask over positions) hits per query -> (D, P)."""
        xq = self._prep(xq)
        if trace.ON:
            trace.mark("validation")
        with self.lock.read():
            if trace.ON:
                trace.mark("lock wait")
            n = self.ntotal
            set_threads_for(len(xq))
            if allowed is None and not self.n_dead:
                D, P = self._run(self._search_index(False), xq, k, params, None)
            else:
                _, mask, _, sel = self._selector(allowed, n)
                D = None
                if self._sel_ok:
                    try:
                        D, P = self._run(self.index, xq, k, params, sel)
                    except RuntimeError:
                        LOG.info("index %s takes no id selector; filtering by oversampling", self.desc)
                        self._sel_ok = False
                if D is None:
                    D, P = self._oversample(xq, k, params, mask)
            if trace.ON:
                trace.mark("faiss")
            return self._scores(D, P)

    MAX_SELECTORS = 8  # kept per index state (ntotal, n_dead): a filtered collection's few distinct filters

    def _selector(self, allowed: np.ndarray | None, n: int):
        """(allowed, mask, bits, IDSelectorBitmap) of the live (and `allowed`) positions below n, made once per
        `allowed` array and index state, since unfiltered searches of a collection with tombstones and repeated
        filters (the service keeps their masks) ask for the same one again. The caller holds the read lock."""
        key = (id(allowed), n, self.n_dead)
        hit = self._selectors.get(key)
        if hit is None or hit[0] is not allowed:  # the entry holds `allowed`, so its id is not reused meanwhile
            mask = self._live[:n] if allowed is None else self._restrict(allowed, n)
            bits = np.packbits(mask, bitorder="little")
            hit = (allowed, mask, bits, faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)))
            fresh = {k: v for k, v in self._selectors.items() if k[1:] == key[1:]}  # drop older states' entries
            if len(fresh) >= self.MAX_SELECTORS:
                fresh.clear()
            fresh[key] = hit
            self._selectors = fresh  # one assignment: concurrent readers see the old dict or the new one
        return hit

    def _scores(self, D: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's distances -> the collection metric's scores (cosine from squared L2 over unit vectors)."""
        if self.metric == "cosine":
            D = 1.0 - 0.5 * D
            D[P < 0] = worst(self.metric)
        return D, P

    def _restrict(self, allowed: np.ndarray, n: int) -> np.ndarray:
        """allowed & live over n positions (allowed may predate items added since)."""
        mask = np.zeros(n, dtype=bool)
        m = min(n, len(allowed))
        mask[:m] = allowed[:m] & self._live[:m]
        return mask

    def _run(self, index, xq, k, params, sel):
        if sel is None:  # the common case: reuse one parameters object per SearchParams value
            cached = self._plain_params.get(params)
            if cached is None:
                keep: list = []
                cached = self._plain_params[params] = (_walk_params(self.index, params, None, keep), keep)
            return index.search(xq, k, params=cached[0])
        keep = [sel]
        return index.search(xq, k, params=_walk_params(self.index, params, sel, keep))

    # Candidates one oversampled FAISS call may return (x 12 bytes): queries are searched in slices under it.
    OVERSAMPLE_HITS = 1 << 22

    def _oversample(self, xq, k, params, mask):
        """Best k hits per query among the positions in `mask`, for kinds that take no selector: ask for kk
        candidates (k, 4k, 16k, ... up to ntotal) until each query has k allowed ones; only the queries still
        short are asked again, in slices that keep one call's answer under OVERSAMPLE_HITS candidates."""
        n = self.ntotal
        Do = np.full((len(xq), k), worst(self.space), dtype=np.float32)
        Po = np.full((len(xq), k), -1, dtype=np.int64)
        todo, kk = np.arange(len(xq)), k
        while len(todo):
            kk_n = min(kk, max(n, 1))
            per, short = max(1, self.OVERSAMPLE_HITS // kk_n), []
            for a in range(0, len(todo), per):
                rows = todo[a:a + per]
                D, P = self._run(self.index, xq[rows], kk_n, params, None)
                ok = (P >= 0) & mask[np.clip(P, 0, max(n - 1, 0))] if n else P >= 0
                for r, ok_r, d, p in zip(rows.tolist(), ok, D, P):
                    sel = np.flatnonzero(ok_r)[:k]
                    if len(sel) < k and kk_n < n:
                        short.append(r)
                        continue
                    Do[r, : len(sel)], Po[r, : len(sel)] = d[sel], p[sel]
            todo, kk = np.array(short, dtype=np.int64), kk * 4
        return Do, Po

    def range(self, xq: np.ndarray, radius: float, params: SearchParams = SearchParams(),
              allowed: np.ndarray | None = None, keep: int | None = None):
        """Every live (and allowed) hit within `radius`: per query (D, P, found), D (m,) float32 and P (m,) int64
        its best `keep` hits (all when None) best first, `found` how many it has in all.

        One FAISS call, whose answer holds every hit of every query (live or not) at once: callers bound it by
        slicing the queries (Collection.search)."""
        xq = self._prep(xq)
        if self.metric == "cosine":  # cos > r  <=>  |x - y|^2 < 2 - 2r for unit vectors
            radius = 2.0 - 2.0 * radius
        with self.lock.read():
            n = self.ntotal
            mask = self._live[:n] if allowed is None else self._restrict(allowed, n)
            set_threads_for(len(xq))
            hold: list = []
            lims, D, P = self.index.range_search(xq, float(radius), params=_walk_params(self.index, params, None, hold))
        out = []
        for i in range(len(xq)):
            d, p = D[lims[i]:lims[i + 1]], P[lims[i]:lims[i + 1]]
            ok = (p >= 0) & (p < n)
            d, p = d[ok], p[ok]
            ok = mask[p]
            d, p = d[ok], p[ok]
            order = self.best_first(d, BIGGER_IS_BETTER[self.space], keep)
            out.append((*self._scores(d[order], p[order]), len(d)))
        return out

    @staticmethod
    def best_first(d: np.ndarray, bigger: bool, keep: int | None) -> np.ndarray:
        """Indices of the best `keep` values of `d` (all when None), best first; ties keep their order in `d`, so
        that pages cut from the same hits agree whatever `keep` each page asks for."""
        s = -d if bigger else d
        if keep is not None and keep < len(s):
            if keep <= 0:
                return np.zeros(0, dtype=np.int64)
            cut = np.partition(s, keep - 1)[keep - 1]
            idx = np.flatnonzero(s <= cut)  # the best keep and every tie of the last: then a stable sort
            return idx[np.argsort(s[idx], kind="stable")][:keep]
        return np.argsort(s, kind="stable")

    # ---- persistence -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Arrays that restore this index (see restore); taken under the lock, written by the caller."""
        with self.lock.read():
            return self.snapshot_of(self.index)

    def snapshot_of(self, index) -> dict[str, np.ndarray]:
        """The snapshot arrays with the FAISS `index` as the stored one (the caller holds the lock)."""
        return {
            "index": faiss.serialize_index(index),
            "pos_iid": self._pos_iid[: self.ntotal].copy(),
            "trained": np.array(self.trained),
            "kind": np.array(self.kind),
        }

    def restore(self, arrays, live_iids: np.ndarray, live_ext: list[str]) -> np.ndarray:
        """Load a snapshot; tombstone what is no longer live. Returns the live iids the snapshot lacks."""
        if str(arrays["kind"]) != self.kind:
            raise ValueError(f"snapshot holds a {arrays['kind']} index, the collection is {self.kind}")
        index = faiss.deserialize_index(np.asarray(arrays["index"]))
        pos_iid = np.asarray(arrays["pos_iid"], dtype=np.int64)
        if index.ntotal != len(pos_iid) or index.d != self.dim:
            raise ValueError("snapshot does not match its id map")
        ext_of = dict(zip(live_iids.tolist(), live_ext))
        self.index, self.trained = index, bool(arrays["trained"])
        self._pos_iid = pos_iid.copy()
        self._live = np.fromiter((i in ext_of for i in pos_iid.tolist()), dtype=bool, count=len(pos_iid))
        self._pos_ext = np.array([ext_of.get(i, "") for i in pos_iid.tolist()], dtype=object)
        self._n = len(pos_iid)
        self._iid_pos = {i: p for p, i in enumerate(pos_iid.tolist()) if i in ext_of}
        self.n_dead = int((~self._live).sum())
        return np.setdiff1d(live_iids, self.live_iids())
