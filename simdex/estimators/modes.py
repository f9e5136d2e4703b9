"""Mean shift's post-processing, as scikit-learn's: merge converged modes, label points by their nearest mode.

Distances here are float64 (exact differences where a decision is at stake), so that a near-tie never depends on
how points were batched.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from simdex.estimators.cells import TREE_MAX_DIM

MERGE_BATCH = 1024       # candidate modes merged at once
LABEL_BLOCK = 1 << 21    # point x (centre + coordinate) entries computed at once (16 MB float64)


def merge(modes: np.ndarray, intensity: np.ndarray, bw: float) -> np.ndarray:
    """scikit-learn's merge: exact duplicates keep the last seed's intensity; modes sorted by (intensity,
    coordinates) descending; a mode is kept unless a kept one lies within bandwidth. (m, d) -> (k, d), same dtype."""
    modes, last = np.unique(modes[::-1], axis=0, return_index=True)
    intensity = intensity[::-1][last]
    order = np.lexsort((*modes.T[::-1], intensity))[::-1]
    modes = modes[order]
    return modes[_greedy_keep(modes, bw)]


def _greedy_keep(C: np.ndarray, bw: float) -> np.ndarray:
    """(k,) bool: C (k, d) in priority order, each kept unless an earlier kept row is within bw (<=)."""
    keep = np.zeros(len(C), dtype=bool)
    C64 = C.astype(np.float64)
    for b0 in range(0, len(C), MERGE_BATCH):
        idx = np.arange(b0, min(len(C), b0 + MERGE_BATCH))
        kept = np.flatnonzero(keep[:b0])
        if kept.size:
            idx = idx[~_any_within(C64[idx], C64[kept], bw)]
        if not idx.size:
            continue
        close = _within(C64[idx], bw)
        dead = np.zeros(len(idx), dtype=bool)
        for i in range(len(idx)):
            if not dead[i]:
                keep[idx[i]] = True
                dead |= close[i]
    return keep


def _any_within(A: np.ndarray, B: np.ndarray, r: float) -> np.ndarray:
    """(len(A),) bool: some row of B lies within r (<=) of the row of A. float64 (m, d), (p, d)."""
    if A.shape[1] <= TREE_MAX_DIM:
        dist, _ = cKDTree(B).query(A, k=1, distance_upper_bound=np.nextafter(r, np.inf))
        return dist <= r
    out, step = np.zeros(len(A), dtype=bool), max(1, LABEL_BLOCK // len(A))
    for j0 in range(0, len(B), step):
        out |= (_sqdist(A, B[j0:j0 + step]) <= r * r).any(1)
    return out


def _within(A: np.ndarray, r: float) -> np.ndarray:
    """(m, m) bool: rows of A (m, d) float64 within r (<=) of each other."""
    if A.shape[1] <= TREE_MAX_DIM:
        pairs = cKDTree(A).query_pairs(r, output_type="ndarray")
        close = np.zeros((len(A), len(A)), dtype=bool)
        close[pairs[:, 0], pairs[:, 1]] = close[pairs[:, 1], pairs[:, 0]] = True
        return close
    return _sqdist(A, A) <= r * r


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(m, p) squared distances of float64 rows, by a matrix product; entries within rounding of each other are
    what they are: used only where a tie at exactly the bandwidth is immaterial."""
    D = np.einsum("ij,ij->i", A, A)[:, None] + np.einsum("ij,ij->i", B, B)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(D, 0.0)


def nearest(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of C (k, d) for each row of X (n, d): (indices (n,) int64, distances (n,) float64, from
    differences). Ties go to the lower index, as scikit-learn's argmin."""
    C64 = C.astype(np.float64)
    c2 = np.einsum("ij,ij->i", C64, C64)
    labels, dist = np.empty(len(X), dtype=np.int64), np.empty(len(X))
    step = max(1, LABEL_BLOCK // (len(C64) + X.shape[1]))   # rows of the block's (rows, k) and (rows, d) arrays
    for i0 in range(0, len(X), step):
        xb = X[i0:i0 + step].astype(np.float64)
        lab = np.argmin(c2[None, :] - 2.0 * (xb @ C64.T), axis=1)
        diff = xb - C64[lab]
        labels[i0:i0 + step], dist[i0:i0 + step] = lab, np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return labels, dist
