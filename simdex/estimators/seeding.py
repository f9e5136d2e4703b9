"""Mean shift's bandwidth estimate and seeds, with scikit-learn's signatures and results.

estimate_bandwidth: the mean, over (sampled) points, of the distance to their k-th nearest (sampled) point, itself
included, k = max(1, int(n * quantile)): exact, by blocks of float64 matrix products whose k-th entries are then
recomputed from differences (so duplicate points give exactly 0, as scikit-learn's tree search does).
get_bin_seeds: grid cells of side bin_size holding >= min_bin_freq points, as cell centres (first-seen order).
"""
from __future__ import annotations

import logging
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, validate_parameter_constraints

from simdex.estimators.validation import ParameterError, domain_errors, shape_of

LOG = logging.getLogger(__name__)

BLOCK = 1 << 23  # distance entries computed at once by estimate_bandwidth (64 MB float64)

_BANDWIDTH_PARAMS = {
    "quantile": [Interval(Real, 0, 1, closed="both")],
    "n_samples": [Interval(Integral, 1, None, closed="left"), None],
    "random_state": ["random_state"],
    "n_jobs": [Integral, None],
}


def estimate_bandwidth(X, *, quantile=0.3, n_samples=None, random_state=0, n_jobs=None) -> np.float64:
    """scikit-learn's estimate_bandwidth: X (n, d) array-like -> np.float64. The sample (n_samples points; None: all)
    is the one scikit-learn draws, `check_random_state(random_state).permutation(n)[:n_samples]`. Quadratic in the
    sample size. n_jobs: accepted for scikit-learn's signature; the products use the BLAS threads."""
    try:
        validate_parameter_constraints(_BANDWIDTH_PARAMS, {"quantile": quantile, "n_samples": n_samples,
                                                           "random_state": random_state, "n_jobs": n_jobs},
                                       caller_name="estimate_bandwidth")
    except InvalidParameterError as exc:
        raise ParameterError(str(exc)) from None
    with domain_errors(shape_of(X)):
        X = check_array(X, dtype=[np.float64, np.float32])
    if n_samples is not None:
        X = X[check_random_state(random_state).permutation(len(X))[:n_samples]]
    k = max(1, int(len(X) * quantile))
    return np.float64(kth_neighbour_distances(X, k).mean())


def kth_neighbour_distances(X: np.ndarray, k: int) -> np.ndarray:
    """(n,) float64: for each row of X (n, d), the distance to its k-th nearest row (itself the first)."""
    X64 = X.astype(np.float64)
    n = len(X64)
    x2 = np.einsum("ij,ij->i", X64, X64)
    out = np.empty(n)
    rows = max(1, BLOCK // n)
    for i0 in range(0, n, rows):
        xb = X64[i0:i0 + rows]
        D = x2[i0:i0 + rows, None] + x2[None, :] - 2.0 * (xb @ X64.T)
        j = np.argpartition(D, k - 1, axis=1)[:, k - 1]
        diff = xb - X64[j]
        out[i0:i0 + rows] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def get_bin_seeds(X, bin_size, min_bin_freq=1):
    """scikit-learn's get_bin_seeds: X (n, d) -> seeds (m, d), the centres of the grid cells of side bin_size that
    hold >= min_bin_freq points, in first-seen order (float32 cells, as scikit-learn). bin_size 0 returns X itself;
    when every point has a cell of its own, X is returned with a warning."""
    if bin_size == 0:
        return X
    with domain_errors(shape_of(X)):
        A = check_array(X, dtype=[np.float64, np.float32])
    cells, first, counts = np.unique(np.round(A / bin_size), axis=0, return_index=True, return_counts=True)
    keep = np.argsort(first, kind="stable")
    keep = keep[counts[keep] >= min_bin_freq]
    if len(keep) == len(A):
        warnings.warn(f"Binning data failed with provided bin_size={bin_size:f}, using data points as seeds.",
                      stacklevel=2)
        return X
    return cells[keep].astype(np.float32) * bin_size


def sample_seeds(X: np.ndarray, max_seeds: int | None, random_state) -> np.ndarray:
    """At most max_seeds rows of X (n, d), a deterministic sample kept in X's order; all of X when it has fewer
    or max_seeds is None."""
    if max_seeds is None or len(X) <= max_seeds:
        return X
    rng = check_random_state(random_state)
    return X[np.sort(rng.choice(len(X), max_seeds, replace=False))]
