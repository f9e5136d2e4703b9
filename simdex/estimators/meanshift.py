"""Mean shift clustering over a FAISS index of the original points, with scikit-learn's MeanShift contract.

Non-blurring: the data never move. Each seed climbs to the kernel-weighted mean of the ORIGINAL points within the
kernel's reach, found by an exact FAISS range search (radius bandwidth**2 for the flat kernel, (3 bandwidth)**2 for
the gaussian one), never by a fixed small k that would truncate the kernel (the lecture's k=50 failure). All active
seeds move together in batches sized so that the range results held at once stay bounded; no n x n matrix exists.
Converged modes are sorted by intensity (points within bandwidth), merged greedily keeping the most populated, and
every point takes the label of its nearest mode, all as scikit-learn does for the flat kernel.

One documented difference: with `seeds=None` and `bin_seeding=False` the seeds are a deterministic sample of at
most `max_seeds` points (`max_seeds=None` seeds from every point, as scikit-learn does). The bandwidth estimate
(`bandwidth=None`) runs on a sample of at most BANDWIDTH_SAMPLE points (scikit-learn's default uses all n, O(n^2)).

Shapes: X, seeds (n, d) float32; cluster_centers_ (n_clusters, d) float32; labels_ (n,) int64.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

from simdex import defaults
from simdex.errors import InvalidArgument
from simdex.index.backend import faiss, gpu_available, set_threads_for
from simdex.wire import as_matrix

LOG = logging.getLogger(__name__)

KERNELS = ("flat", "gaussian")
DEVICES = ("auto", "cpu", "gpu", "torch-cpu")  # torch-cpu: the GPU code path on CPU tensors (tests, no-faiss hosts)
GAUSS_REACH = 3.0  # the gaussian kernel is cut at 3 bandwidths: weight there is exp(-4.5) ~ 1.1%
BANDWIDTH_SAMPLE = 10_000  # points used to estimate the bandwidth; cost O(sample^2 d), sub-second at d=16
RESULT_BUDGET = 1 << 24  # range-search results held at once (id int64 + distance float32: ~200 MB)
TILE = 1 << 24  # torch path: seeds x points block of distances (64 MB float32)
LABEL_BATCH = 1 << 16  # points labelled per k-NN call

# Parameter constraints as data: name -> (check, what it must be).
_CONSTRAINTS = {
    "bandwidth": (lambda v: v is None or (_is_real(v) and 0 < v < np.inf), "None or a finite number > 0"),
    "bin_seeding": (lambda v: isinstance(v, (bool, np.bool_)), "a bool"),
    "min_bin_freq": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "cluster_all": (lambda v: isinstance(v, (bool, np.bool_)), "a bool"),
    "max_iter": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "kernel": (lambda v: v in KERNELS, f"one of {KERNELS}"),
    "device": (lambda v: v in DEVICES, f"one of {DEVICES}"),
    "max_seeds": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an int >= 1"),
    "random_state": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_points(x, name: str = "X", d: int | None = None) -> np.ndarray:
    """(n, d) float32, C-contiguous, n >= 1, finite, d matching when given: simdex.wire.as_matrix, strictly 2-d
    (scikit-learn refuses a 1-d array too)."""
    if np.ndim(x) != 2:
        raise InvalidArgument(f"{name} must be 2-d (n, d); got shape {np.shape(x)}")
    return as_matrix(x, name, d, dim_of="the dimension the model was fitted with")


_GPU_RES: list = []  # one StandardGpuResources for the process; it must outlive every GPU index made from it


def _flat_index(xb: np.ndarray, use_gpu: bool):
    index = faiss.IndexFlatL2(xb.shape[1])
    index.add(xb)
    if use_gpu:
        if not _GPU_RES:
            _GPU_RES.append(faiss.StandardGpuResources())
        index = faiss.index_cpu_to_gpu(_GPU_RES[0], 0, index)
    return index


def _nearest(xq: np.ndarray, xb: np.ndarray, use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest row of xb for each row of xq: (squared distances (nq,) float32, indices (nq,) int64)."""
    index = _flat_index(xb, use_gpu)
    D = np.empty(len(xq), dtype="float32")
    I = np.empty(len(xq), dtype="int64")
    for i0 in range(0, len(xq), LABEL_BATCH):
        set_threads_for(min(LABEL_BATCH, len(xq) - i0))
        Db, Ib = index.search(xq[i0:i0 + LABEL_BATCH], 1)
        D[i0:i0 + len(Db)], I[i0:i0 + len(Ib)] = Db[:, 0], Ib[:, 0]
    return D, I


def estimate_bandwidth(X, quantile: float = 0.3, n_samples: int | None = BANDWIDTH_SAMPLE,
                       random_state: int = 0) -> float:
    """scikit-learn's estimate_bandwidth through FAISS k-NN: the mean over sampled points of the distance to their
    k-th nearest sampled point (itself included), k = max(1, int(n_sample * quantile)). The sample is the one
    scikit-learn draws, `RandomState(random_state).permutation(n)[:n_samples]`. X: (n, d) float32."""
    X = check_points(X)
    if not 0 < quantile <= 1:
        raise InvalidArgument(f"quantile must be in (0, 1]; got {quantile!r}")
    if n_samples is not None and n_samples < len(X):
        X = X[np.random.RandomState(random_state).permutation(len(X))[:n_samples]]
    k = max(1, int(len(X) * quantile))
    index = _flat_index(X, use_gpu=False)
    total = 0.0
    batch = max(1, RESULT_BUDGET // (4 * k))
    for i0 in range(0, len(X), batch):
        set_threads_for(min(batch, len(X) - i0))
        D, _ = index.search(X[i0:i0 + batch], k)
        total += np.sqrt(np.maximum(D[:, -1].astype("float64"), 0)).sum()
    return total / len(X)


def get_bin_seeds(X: np.ndarray, bin_size: float, min_bin_freq: int = 1) -> np.ndarray:
    """scikit-learn's get_bin_seeds: grid cells of side bin_size holding >= min_bin_freq points, as cell centres
    (first-seen order). When every point has its own cell, the points themselves. X: (n, d) float32."""
    cells, first, counts = np.unique(np.round(X / bin_size), axis=0, return_index=True, return_counts=True)
    keep = np.argsort(first, kind="stable")
    keep = keep[counts[keep] >= min_bin_freq]
    if len(keep) == len(X):
        LOG.warning("binning failed with bin_size=%g (one point per bin): using the data points as seeds", bin_size)
        return X
    return cells[keep].astype("float32") * np.float32(bin_size)


class _FaissSums:
    """Neighbour sums by exact FAISS range search: for seeds S (m, d) returns (sum of weights (m,) float64,
    weighted sum of points (m, d) float32, points within bandwidth (m,) int64, range results (m,) int64)."""

    def __init__(self, X: np.ndarray, bandwidth: float, kernel: str, use_gpu: bool):
        self.X, self.kernel, self.bw2 = X, kernel, bandwidth * bandwidth
        self.reach2 = self.bw2 * (GAUSS_REACH ** 2 if kernel == "gaussian" else 1.0)
        self.cpu = _flat_index(X, use_gpu=False)
        self.gpu = _flat_index(X, use_gpu=True) if use_gpu else None

    def _range(self, S):
        if self.gpu is None:
            return self.cpu.range_search(S, self.reach2)
        from faiss.contrib.exhaustive_search import range_search_gpu  # noqa: PLC0415
        return range_search_gpu(S, self.reach2, self.gpu, self.cpu)

    def __call__(self, S: np.ndarray, est: np.ndarray) -> tuple:
        m, n = len(S), len(self.X)
        wsum, wx = np.zeros(m), np.zeros(S.shape, dtype="float32")
        count, nres = np.zeros(m, dtype="int64"), np.zeros(m, dtype="int64")
        guess, i0 = n, 0  # results per seed: its last count, else the most seen so far this call
        while i0 < m:
            e = np.where(est[i0:] > 0, est[i0:], guess)
            b = max(1, int(np.searchsorted(np.cumsum(e), RESULT_BUDGET, side="right")))
            Sb = S[i0:i0 + b]
            set_threads_for(len(Sb))
            lims, D, I = self._range(Sb)
            nres[i0:i0 + b] = np.diff(lims)
            if self.kernel == "flat":
                w = np.ones(len(I), dtype="float32")
                wsum[i0:i0 + b] = count[i0:i0 + b] = np.diff(lims)
            else:
                w = np.exp(-0.5 * D / self.bw2).astype("float32")
                wsum[i0:i0 + b] = _segment_sums(w.astype("float64"), lims)
                count[i0:i0 + b] = _segment_sums((D <= self.bw2).astype("int64"), lims)
            wx[i0:i0 + b] = sparse.csr_matrix((w, I, lims), shape=(len(Sb), n)) @ self.X
            guess = max(guess if i0 else 1, int(nres[i0:i0 + b].max(initial=1)))
            i0 += b
        return wsum, wx, count, nres


def _segment_sums(v: np.ndarray, lims: np.ndarray) -> np.ndarray:
    """Sums of v over the segments lims[i]:lims[i+1] (empty segments give 0)."""
    cs = np.concatenate([np.zeros(1, dtype=v.dtype), np.cumsum(v)])
    return cs[lims[1:]] - cs[lims[:-1]]


class _TorchSums:
    """The same sums on torch tensors (CUDA, or CPU for tests): the lecture's batched version, distances by
    torch.cdist over (seeds x points) tiles of at most TILE entries, weights masked to the kernel's reach."""

    def __init__(self, X: np.ndarray, bandwidth: float, kernel: str, device: str):
        import torch  # noqa: PLC0415  (heavy; only this path needs it)

        self.torch, self.dev, self.kernel, self.bw = torch, torch.device(device), kernel, bandwidth
        self.reach = bandwidth * (GAUSS_REACH if kernel == "gaussian" else 1.0)
        # float64: distances by cdist's matrix-product form lose ~|x|^2 * 1e-7 in float32, enough at 4096-d for
        # boundary points to flip between iterations so that seeds never met the stopping test (300 iterations
        # instead of 1, seen on an H100/H200); the FAISS path does not take this route.
        self.X = torch.from_numpy(X).to(self.dev, dtype=torch.float64)

    def __call__(self, S: np.ndarray, est: np.ndarray) -> tuple:
        torch, n = self.torch, len(self.X)
        wsum, wx = np.zeros(len(S)), np.zeros(S.shape, dtype="float32")
        count = np.zeros(len(S), dtype="int64")
        b = min(len(S), 4096)
        c = max(1, TILE // b)
        with torch.no_grad():
            for i0 in range(0, len(S), b):
                Sb = torch.from_numpy(S[i0:i0 + b]).to(self.dev, dtype=torch.float64)
                acc_w = torch.zeros(len(Sb), dtype=torch.float64, device=self.dev)
                acc_x = torch.zeros(Sb.shape, dtype=torch.float64, device=self.dev)
                acc_n = torch.zeros(len(Sb), dtype=torch.int64, device=self.dev)
                for j0 in range(0, n, c):
                    Xc = self.X[j0:j0 + c]
                    dist = torch.cdist(Sb, Xc)
                    inside = dist <= self.bw
                    if self.kernel == "flat":
                        W = inside.double()
                    else:
                        W = torch.exp(-0.5 * (dist / self.bw) ** 2) * (dist <= self.reach)
                    acc_x += W @ Xc
                    acc_w += W.sum(1, dtype=torch.float64)
                    acc_n += inside.sum(1)
                wsum[i0:i0 + b], wx[i0:i0 + b] = acc_w.cpu().numpy(), acc_x.float().cpu().numpy()
                count[i0:i0 + b] = acc_n.cpu().numpy()
        return wsum, wx, count, count


class MeanShift:
    """Mean shift clustering (scikit-learn's MeanShift contract) over FAISS; see the module docstring.

    Parameters as scikit-learn's, plus `kernel` ("flat": bandwidth is the radius, drop-in for scikit-learn;
    "gaussian": weights exp(-0.5 (d/bandwidth)^2) up to 3 bandwidths, as the lecture), `device` ("auto", "cpu",
    "gpu", "torch-cpu"), `max_seeds` (cap on sampled seeds; None: every point) and `random_state` (seed sample and
    bandwidth sample).

    Fitted: cluster_centers_ (n_clusters, d) float32, labels_ (n,) int64, n_iter_ int (most iterations of any
    seed), bandwidth_ float (given or estimated), n_features_in_ int.
    """

    def __init__(self, bandwidth=None, seeds=None, bin_seeding=False, min_bin_freq=defaults.CLUSTER_MIN_BIN_FREQ,
                 cluster_all=True, max_iter=defaults.CLUSTER_MAX_ITER, kernel=defaults.CLUSTER_KERNEL, device="auto",
                 max_seeds=defaults.CLUSTER_MAX_SEEDS, random_state=0):
        self.bandwidth = bandwidth
        self.seeds = seeds
        self.bin_seeding = bin_seeding
        self.min_bin_freq = min_bin_freq
        self.cluster_all = cluster_all
        self.max_iter = max_iter
        self.kernel = kernel
        self.device = device
        self.max_seeds = max_seeds
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in (*_CONSTRAINTS, "seeds")}

    def _check_params(self) -> None:
        for name, (ok, must) in _CONSTRAINTS.items():
            value = getattr(self, name)
            if not ok(value):
                raise InvalidArgument(f"{name} must be {must}; got {value!r}")

    def fit(self, X, y=None) -> MeanShift:
        """Cluster X (n, d) float32. Returns self."""
        self._check_params()
        X = check_points(X)
        n, d = X.shape
        bw = float(self.bandwidth) if self.bandwidth is not None else estimate_bandwidth(
            X, random_state=self.random_state)
        if not bw > 0:
            raise InvalidArgument(f"the estimated bandwidth is {bw!r} (duplicate points?): pass bandwidth > 0")
        seeds = self._initial_seeds(X, bw)
        shift_gpu, faiss_gpu = self._devices()
        LOG.info("mean shift: n=%d d=%d bandwidth=%g seeds=%d kernel=%s device=%s", n, d, bw, len(seeds),
                 self.kernel, shift_gpu or ("faiss-gpu" if faiss_gpu else "cpu"))
        sums = (_TorchSums(X, bw, self.kernel, shift_gpu) if shift_gpu
                else _FaissSums(X, bw, self.kernel, faiss_gpu))
        modes, intensity, n_iter = self._climb(seeds, sums, bw)
        keep = intensity > 0
        if not keep.any():
            raise InvalidArgument(f"no point was within bandwidth={bw:g} of any seed: try other seeds or a larger "
                                  "bandwidth")
        centers = _merge(modes[keep], intensity[keep], bw, faiss_gpu)
        D, labels = _nearest(X, centers, faiss_gpu)
        if not self.cluster_all:
            labels[D > bw * bw] = -1
        self.cluster_centers_, self.labels_, self.n_iter_ = centers, labels, n_iter
        self.bandwidth_, self.n_features_in_ = bw, d
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def predict(self, X) -> np.ndarray:
        """Index of the nearest cluster centre for each row of X (n, d) float32: (n,) int64 (never -1)."""
        if not hasattr(self, "cluster_centers_"):
            raise InvalidArgument("this MeanShift is not fitted yet: call fit(X) first")
        X = check_points(X, d=self.n_features_in_)
        return _nearest(X, self.cluster_centers_, self._devices()[1])[1]

    def _devices(self) -> tuple[str | None, bool]:
        """(torch device for the shifts or None for FAISS, whether FAISS indexes go to the GPU)."""
        if self.device == "torch-cpu":
            return "cpu", False
        if self.device == "cpu":
            return None, False
        torch_cuda = _torch_cuda()
        if self.device == "gpu" and not (torch_cuda or gpu_available()):
            raise InvalidArgument("device='gpu' but neither faiss nor torch sees a GPU; use device='auto' or 'cpu'")
        # FAISS has no GPU range search (its GPU emulation falls back to the CPU on big neighbourhoods),
        # so the shifts use torch CUDA when present; FAISS GPU still does the k-NN of merging and labelling.
        return ("cuda" if torch_cuda else None), gpu_available()

    def _initial_seeds(self, X: np.ndarray, bw: float) -> np.ndarray:
        if self.seeds is not None:
            return check_points(self.seeds, name="seeds", d=X.shape[1])
        seeds = get_bin_seeds(X, bw, self.min_bin_freq) if self.bin_seeding else X
        if seeds is X and self.max_seeds is not None and len(X) > self.max_seeds:
            rng = np.random.RandomState(self.random_state)
            seeds = X[np.sort(rng.choice(len(X), self.max_seeds, replace=False))]
        return seeds

    def _climb(self, seeds: np.ndarray, sums, bw: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Move every seed to the weighted mean of the original points in reach until it moves <= 1e-3 bandwidth
        or has done max_iter iterations (scikit-learn's loop, vectorised). Seeds at bitwise-equal positions share
        one neighbour search (their futures are identical). Returns modes (m, d) float32, intensity (m,) int64
        (points within bandwidth at the last step; 0: no point within reach, the seed is dropped), n_iter."""
        pos = np.array(seeds, dtype="float32")
        m = len(pos)
        iters, intensity, est = np.zeros(m, dtype="int64"), np.zeros(m, dtype="int64"), np.zeros(m, dtype="int64")
        active, stop = np.arange(m), 1e-3 * bw
        while active.size:
            uniq, first, inv = np.unique(pos[active], axis=0, return_index=True, return_inverse=True)
            inv = inv.reshape(-1)
            wsum, wx, count, nres = sums(uniq, est[active[first]])
            wsum, wx, count, nres = wsum[inv], wx[inv], count[inv], nres[inv]
            empty = wsum <= 0
            if empty.any():  # nothing in reach: scikit-learn drops the seed (zero intensity)
                intensity[active[empty]] = 0
                active, wsum, wx, count, nres = (a[~empty] for a in (active, wsum, wx, count, nres))
            new = (wx / wsum[:, None]).astype("float32")
            moved = np.linalg.norm(new - pos[active], axis=1)
            pos[active], intensity[active], est[active] = new, count, nres
            done = (moved <= stop) | (iters[active] >= self.max_iter)
            iters[active[~done]] += 1
            active = active[~done]
            LOG.debug("mean shift: %d seeds still moving", active.size)
        return pos, intensity, int(iters.max(initial=0))


def _merge(modes: np.ndarray, intensity: np.ndarray, bw: float, use_gpu: bool) -> np.ndarray:
    """scikit-learn's post-processing: exact duplicates keep the last seed's intensity; modes sorted by
    (intensity, coordinates) descending; a mode is kept unless a kept one lies within bandwidth. (m, d) -> (k, d)."""
    rev = modes[::-1]
    modes, last = np.unique(rev, axis=0, return_index=True)
    intensity = intensity[::-1][last]
    order = np.lexsort((*modes.T[::-1], intensity))[::-1]
    modes = modes[order]
    kept: list[np.ndarray] = []
    batch = 4096
    for i0 in range(0, len(modes), batch):
        cand = modes[i0:i0 + batch]
        if kept:  # most candidates fall within bandwidth of a mode kept earlier
            D, _ = _nearest(cand, np.stack(kept), use_gpu)
            cand = cand[D > bw * bw]
        fresh: list[np.ndarray] = []
        for c in cand:  # greedy within the batch, in intensity order
            if not fresh or np.sqrt(((np.stack(fresh) - c).astype("float64") ** 2).sum(1)).min() > bw:
                fresh.append(c)
        kept.extend(fresh)
    return np.stack(kept).astype("float32")


def _torch_cuda() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
