"""Mean shift clustering with scikit-learn's contract: MeanShift, mean_shift, estimate_bandwidth, get_bin_seeds.

`MeanShift` is a scikit-learn estimator (BaseEstimator, ClusterMixin: get_params/set_params, clone, pipelines,
grid search, fit_predict) with every parameter of `sklearn.cluster.MeanShift` and its results: non-blurring mean
shift (the data never move), each seed climbing to the kernel-weighted mean of the ORIGINAL points within the
kernel's reach until it moves <= 1e-3 bandwidth or has done max_iter steps; modes sorted by intensity (points
within bandwidth) then coordinates, merged greedily keeping the most populated, every point labelled with its
nearest mode (-1 beyond the bandwidth when cluster_all=False). The input's dtype is kept (float32 stays float32,
anything else becomes float64); an estimated bandwidth of 0 clusters equal points, as scikit-learn does; errors are
ValueErrors (simdex domain errors that are also the scikit-learn classes, see simdex.estimators.validation).

Speed comes from the neighbour search, never from a truncated kernel: exact sums through a kd-tree for
d <= TREE_MAX_DIM (simdex.estimators.cells), exact FAISS range search above, torch on a GPU.

Documented differences from scikit-learn (each a cap with None restoring scikit-learn's behaviour exactly):
  - max_seeds=1000: with seeds=None the seeds are a deterministic sample of at most max_seeds points (scikit-learn
    seeds from every point, O(n) climbs);
  - bandwidth_samples=10000: bandwidth=None estimates it on a sample of that many points (scikit-learn uses all,
    O(n^2) time).
Extras: kernel ("flat", scikit-learn's; "gaussian": weights exp(-0.5 (d/bandwidth)^2) up to 3 bandwidths), device
("auto", "cpu", "gpu", "torch-cpu": the GPU code on CPU tensors), random_state (seed and bandwidth samples).
n_jobs: the neighbour search's worker threads, as scikit-learn reads it (None: 1 unless inside
joblib.parallel_config; -1: every core); the results do not depend on it. As in scikit-learn, the BLAS (matrix
products) and FAISS keep their own thread pools.

Shapes: X, seeds (n, d) float32 or float64; cluster_centers_ (n_clusters, d) X's dtype; labels_ (n,) int64.
"""
from __future__ import annotations

import logging
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, _fit_context
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions

from simdex import defaults
from simdex.estimators.brute import FaissSums, TorchSums
from simdex.estimators.cells import TREE_MAX_DIM, ExactSums, TreeSums, needs_float64
from simdex.estimators.modes import merge, nearest
from simdex.estimators.seeding import estimate_bandwidth, get_bin_seeds, sample_seeds
from simdex.estimators.validation import (DomainParams, EstimatorError, check_data, check_fitted, domain_errors,
                                          effective_threads, shape_of)
from simdex.index.backend import gpu_available

LOG = logging.getLogger(__name__)

__all__ = ["MeanShift", "mean_shift", "estimate_bandwidth", "get_bin_seeds"]

KERNELS = ("flat", "gaussian")
DEVICES = ("auto", "cpu", "gpu", "torch-cpu")
BANDWIDTH_SAMPLES = 10_000  # points the bandwidth is estimated on; cost O(sample^2 d), sub-second at d=16


class MeanShift(DomainParams, ClusterMixin, BaseEstimator):
    """Mean shift clustering, scikit-learn's MeanShift (see the module docstring for the two documented caps and
    the extras).

    Fitted: cluster_centers_ (n_clusters, d) X's dtype, labels_ (n,) int64, n_iter_ int (most iterations of any
    seed), n_features_in_ int, bandwidth_ float (given or estimated).
    """

    _parameter_constraints: dict = {
        "bandwidth": [Interval(Real, 0, None, closed="neither"), None],
        "seeds": ["array-like", None],
        "bin_seeding": ["boolean"],
        "min_bin_freq": [Interval(Integral, 1, None, closed="left")],
        "cluster_all": ["boolean"],
        "n_jobs": [Integral, None],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "kernel": [StrOptions(set(KERNELS))],
        "device": [StrOptions(set(DEVICES))],
        "max_seeds": [Interval(Integral, 1, None, closed="left"), None],
        "bandwidth_samples": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(self, *, bandwidth=None, seeds=None, bin_seeding=False, min_bin_freq=defaults.CLUSTER_MIN_BIN_FREQ,
                 cluster_all=True, n_jobs=None, max_iter=defaults.CLUSTER_MAX_ITER, kernel=defaults.CLUSTER_KERNEL,
                 device="auto", max_seeds=defaults.CLUSTER_MAX_SEEDS, bandwidth_samples=BANDWIDTH_SAMPLES,
                 random_state=0):
        self.bandwidth = bandwidth
        self.seeds = seeds
        self.bin_seeding = bin_seeding
        self.min_bin_freq = min_bin_freq
        self.cluster_all = cluster_all
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.kernel = kernel
        self.device = device
        self.max_seeds = max_seeds
        self.bandwidth_samples = bandwidth_samples
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Cluster X (n, d) array-like. y is ignored. Returns self."""
        X = check_data(self, X, reset=True)
        threads = effective_threads(self.n_jobs)
        bw = self._bandwidth(X)
        seeds = self._initial_seeds(X, bw)
        sums = self._sums(X, bw, threads)
        LOG.info("mean shift: n=%d d=%d bandwidth=%g seeds=%d kernel=%s search=%s threads=%d", *X.shape, bw,
                 len(seeds), self.kernel, type(sums).__name__, threads)
        modes, intensity, self.n_iter_ = climb(seeds, sums, bw, self.max_iter)
        keep = intensity > 0
        if not keep.any():
            raise EstimatorError(f"No point was within bandwidth={bw:f} of any seed: try a different seeding "
                                 "strategy (other seeds, bin_seeding) or a larger bandwidth")
        centres = merge(modes[keep], intensity[keep], bw)
        labels, dist = nearest(X, centres)
        if not self.cluster_all:
            labels[dist > bw] = -1
        self.cluster_centers_, self.labels_, self.bandwidth_ = centres, labels, bw
        return self

    def predict(self, X):
        """Index of the nearest cluster centre for each row of X (n, d): (n,) int64 (never -1)."""
        check_fitted(self)
        X = check_data(self, X, reset=False)
        return nearest(X, self.cluster_centers_)[0]

    def _bandwidth(self, X: np.ndarray) -> float:
        if self.bandwidth is not None:
            return float(self.bandwidth)
        cap = self.bandwidth_samples
        return float(estimate_bandwidth(X, n_samples=cap if cap is not None and len(X) > cap else None,
                                        random_state=self.random_state))

    def _initial_seeds(self, X: np.ndarray, bw: float) -> np.ndarray:
        """(m, d) X's dtype: the given seeds, the bin seeds, or a sample of at most max_seeds points."""
        if self.seeds is not None:
            with domain_errors(shape_of(self.seeds)):
                seeds = check_array(self.seeds, dtype=X.dtype, input_name="seeds")
            if seeds.shape[1] != X.shape[1]:
                raise EstimatorError(f"seeds have {seeds.shape[1]} features, but X has {X.shape[1]}: pass seeds of "
                                     "shape (m, n_features)")
            return seeds
        if self.bin_seeding:
            seeds = get_bin_seeds(X, bw, self.min_bin_freq)
            if seeds is not X:   # X itself when binning failed: sampled below, as without bin_seeding
                return np.asarray(seeds, dtype=X.dtype)
        return sample_seeds(X, self.max_seeds, self.random_state)

    def _sums(self, X: np.ndarray, bw: float, threads: int):
        """The neighbour search: exact matches for bandwidth 0, torch on a GPU, the kd-tree in low d, FAISS."""
        if bw == 0:
            return ExactSums(X)
        torch_device, faiss_gpu = self._devices()
        if torch_device:
            return TorchSums(X, bw, self.kernel, torch_device)
        if X.shape[1] <= TREE_MAX_DIM or needs_float64(X, bw):
            return TreeSums(X, bw, self.kernel, threads)   # any d, float64 products when float32 could overflow
        return FaissSums(X, bw, self.kernel, faiss_gpu)

    def _devices(self) -> tuple[str | None, bool]:
        """(torch device for the sums or None for the CPU paths, whether FAISS runs on the GPU)."""
        if self.device == "torch-cpu":
            return "cpu", False
        if self.device == "cpu":
            return None, False
        torch_cuda, faiss_gpu = _torch_cuda(), gpu_available()
        if self.device == "gpu" and not (torch_cuda or faiss_gpu):
            raise EstimatorError("device='gpu' but neither faiss nor torch sees a GPU; use device='auto' or 'cpu'")
        # FAISS has no GPU range search (its GPU emulation falls back to the CPU on big neighbourhoods),
        # so the sums use torch CUDA when present.
        return ("cuda" if torch_cuda else None), faiss_gpu


def mean_shift(X, *, bandwidth=None, seeds=None, bin_seeding=False, min_bin_freq=defaults.CLUSTER_MIN_BIN_FREQ,
               cluster_all=True, max_iter=defaults.CLUSTER_MAX_ITER, n_jobs=None, kernel=defaults.CLUSTER_KERNEL,
               device="auto", max_seeds=defaults.CLUSTER_MAX_SEEDS, bandwidth_samples=BANDWIDTH_SAMPLES,
               random_state=0):
    """scikit-learn's mean_shift: (cluster_centers (n_clusters, d), labels (n,) int64) of MeanShift(...).fit(X)."""
    model = MeanShift(bandwidth=bandwidth, seeds=seeds, bin_seeding=bin_seeding, min_bin_freq=min_bin_freq,
                      cluster_all=cluster_all, max_iter=max_iter, n_jobs=n_jobs, kernel=kernel, device=device,
                      max_seeds=max_seeds, bandwidth_samples=bandwidth_samples, random_state=random_state).fit(X)
    return model.cluster_centers_, model.labels_


def climb(seeds: np.ndarray, sums, bw: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Move every seed to the weighted mean of the original points in reach until it moves <= 1e-3 bandwidth or
    has done max_iter iterations (scikit-learn's loop, vectorised over seeds). Seeds at equal positions share one
    neighbour search (their futures are identical). seeds (m, d) float32/float64 -> (modes (m, d) same dtype,
    intensity (m,) int64: points within bandwidth at the last step, 0 when nothing was in reach, n_iter)."""
    pos = np.array(seeds)
    m = len(pos)
    iters, intensity = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    active, stop = np.arange(m), 1e-3 * bw
    while active.size:
        uniq, inv = np.unique(pos[active], axis=0, return_inverse=True)
        wsum, wx, count = (a[inv.reshape(-1)] for a in sums(uniq))
        empty = wsum <= 0
        if empty.any():  # nothing in reach: scikit-learn drops the seed (zero intensity)
            intensity[active[empty]] = 0
            active, wsum, wx, count = active[~empty], wsum[~empty], wx[~empty], count[~empty]
        new = (wx / wsum[:, None]).astype(pos.dtype)
        moved = np.linalg.norm(new - pos[active], axis=1)
        pos[active], intensity[active] = new, count
        done = (moved <= stop) | (iters[active] >= max_iter)
        iters[active[~done]] += 1
        active = active[~done]
        LOG.debug("mean shift: %d seeds still moving", active.size)
    return pos, intensity, int(iters.max(initial=0))


def _torch_cuda() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
