"""Exact neighbour sums for mean shift in low dimensions (d <= TREE_MAX_DIM), pruned by a kd-tree.

The points are organised once in a kd-tree (scipy's, median splits, leaves of at most `leaf` points); every node
keeps its centre, radius (farthest member from the centre), box (the range of its points per coordinate) and the
sum and count of its members. Seeds walk down the tree together, level by level, as (seed, node) pairs; from the
ball and the box a pair gets a lower and an upper bound of its distances, and the node is
  - out of the kernel's reach when the lower bound exceeds it: dropped;
  - inside the ball of radius bandwidth when the upper bound is within it (flat kernel): its sum and count are
    added whole;
  - otherwise on the boundary: its children are visited, or at a leaf its points are tested one by one.
That is exactly the neighbour set of a brute-force range search with float64 distances (the tests compare the
two), at a small fraction of the work: only points near the kernel's edge are looked at one by one. Leaf points
are tested by direct float64 differences up to DIFF_MAX_DIM, and above by one matrix product per leaf
(coordinates relative to the leaf's centre; pairs within rounding of the threshold are decided again from float64
differences), so no decision depends on how seeds were batched.

Seeds are processed in chunks of SEED_CHUNK on `threads` threads; the chunking does not depend on the thread
count, so neither do the results. Shapes: X (n, d) float32 or float64 (kept), seeds (m, d) of the same dtype.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

LOG = logging.getLogger(__name__)

TREE_MAX_DIM = 16    # above this a tree prunes little (every node near every seed): brute force is used
DIFF_MAX_DIM = 2     # leaves tested by direct differences up to this d, by matrix products above
SEED_CHUNK = 128     # seeds per unit of work (fixed, so results do not depend on threads; small: cache-friendly)
PAIR_BUDGET = 1 << 22  # leaf (seed, point) coordinates gathered at once by the difference path (32 MB float64)
GAUSS_REACH = 3.0    # the gaussian kernel is cut at 3 bandwidths: weight there is exp(-4.5) ~ 1.1%


def leaf_size(d: int) -> int:
    """Points per leaf: small leaves make tight bounds in the plane (tested by differences, vectorised over
    pairs); from 5-d on, bounds are loose anyway and larger leaves make fewer, larger matrix products. Chosen by
    measurement (bench/meanshift.py)."""
    return 32 if d <= DIFF_MAX_DIM else 1024


def needs_float64(X: np.ndarray, bandwidth: float) -> bool:
    """Whether float32 X (n, d) is too large for float32 squared distances (norms near float32's range), so
    that the products must run in float64."""
    if X.dtype != np.float32:
        return False
    big = float(np.abs(X).max(initial=0.0)) ** 2 * X.shape[1]
    return not (big < 1e30 and (GAUSS_REACH * bandwidth) ** 2 < 1e30)


@dataclass
class Tree:
    """A kd-tree over X[perm]: node i holds points perm[start[i]:end[i]]; children left[i], left[i] + 1 (-1 at a
    leaf); centre (N, d) float64, radius (N,) float64 (exact at leaves, an upper bound above), lo and hi (N, d)
    float64 (the box of its points), sums (N, d) float64, count (N,) int64; leaves: leaf ids in point order;
    X64 (n, d) float64: the points in tree order."""
    perm: np.ndarray
    start: np.ndarray
    end: np.ndarray
    left: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sums: np.ndarray
    count: np.ndarray
    leaves: np.ndarray
    X64: np.ndarray


def build_tree(X: np.ndarray, leaf: int) -> Tree:
    """kd-tree of X (n, d): scipy's (median splits, deterministic), its nodes numbered level by level; sums and
    boxes exact, radii exact at the leaves and bounded above them (centre gap + child radius)."""
    perm, start, end, left = _kd_shape(X, leaf)
    X64 = X[perm].astype(np.float64)
    count = end - start
    leaves = np.flatnonzero(left < 0)
    leaves = leaves[np.argsort(start[leaves])]
    sums, lo, hi = (np.empty((len(start), X.shape[1])) for _ in range(3))
    sums[leaves] = np.add.reduceat(X64, start[leaves])
    lo[leaves], hi[leaves] = np.minimum.reduceat(X64, start[leaves]), np.maximum.reduceat(X64, start[leaves])
    levels = list(_levels(left))
    for nodes in reversed(levels):
        inner = nodes[left[nodes] >= 0]
        a, b = left[inner], left[inner] + 1
        sums[inner], lo[inner], hi[inner] = sums[a] + sums[b], np.minimum(lo[a], lo[b]), np.maximum(hi[a], hi[b])
    centre = sums / count[:, None]
    owner = np.repeat(leaves, count[leaves])
    r2 = np.empty(len(X64))
    for i0 in range(0, len(X64), 1 << 16):   # by blocks: no second (n, d) float64 array
        diff = X64[i0:i0 + (1 << 16)] - centre[owner[i0:i0 + (1 << 16)]]
        r2[i0:i0 + len(diff)] = np.einsum("ij,ij->i", diff, diff)
    radius = np.zeros(len(start))
    radius[leaves] = np.sqrt(np.maximum.reduceat(r2, start[leaves]))
    for nodes in reversed(levels):
        inner = nodes[left[nodes] >= 0]
        for child in (left[inner], left[inner] + 1):
            gap = np.sqrt(np.einsum("ij,ij->i", centre[inner] - centre[child], centre[inner] - centre[child]))
            radius[inner] = np.maximum(radius[inner], gap * (1 + 1e-12) + radius[child])
    return Tree(perm, start, end, left, centre, radius * (1 + 1e-12) + 1e-300, lo, hi, sums, count, leaves, X64)


def _kd_shape(X: np.ndarray, leaf: int) -> tuple[np.ndarray, ...]:
    """scipy's balanced kd-tree of X, as (perm (n,), start, end, left (N,)) int64 arrays, nodes level by level."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    kd = cKDTree(X, leafsize=leaf, balanced_tree=True, compact_nodes=False)
    order, lefts = [kd.tree], []
    i = 0
    while i < len(order):
        nd = order[i]
        if nd.split_dim < 0:
            lefts.append(-1)
        else:
            lefts.append(len(order))
            order += [nd.lesser, nd.greater]
        i += 1
    return (np.array(kd.indices), np.array([nd.start_idx for nd in order]), np.array([nd.end_idx for nd in order]),
            np.array(lefts))


def _levels(left: np.ndarray):
    """Node ids level by level (root first)."""
    level = np.array([0])
    while level.size:
        yield level
        inner = level[left[level] >= 0]
        level = np.stack([left[inner], left[inner] + 1], axis=1).ravel()


class TreeSums:
    """Kernel sums over the original points within reach of each seed: for seeds S (m, d) returns (sum of weights
    (m,) float64, weighted sum of points (m, d) float64, points within bandwidth (m,) int64)."""

    def __init__(self, X: np.ndarray, bandwidth: float, kernel: str, threads: int = 1, leaf: int | None = None):
        n, d = X.shape
        # products in X's dtype, float64 where float32 squares could overflow (norms near float32's range)
        self.dtype = np.dtype(np.float64) if needs_float64(X, bandwidth) else X.dtype
        self.kernel, self.threads, self.d = kernel, threads, d
        self.bw, self.bw2 = float(bandwidth), float(bandwidth) ** 2
        self.reach = self.bw * (GAUSS_REACH if kernel == "gaussian" else 1.0)
        self.tree = t = build_tree(X, leaf or leaf_size(d))
        self.Xs = X[t.perm]                                         # (n, d) dtype, leaf by leaf
        self.X64 = t.X64
        leaves = t.leaves
        if d <= DIFF_MAX_DIM:   # leaves padded to one length: zeros, marked invalid (infinitely far)
            L = int(t.count[leaves].max())
            self.slot = np.full(len(t.start), -1)
            self.slot[leaves] = np.arange(len(leaves))
            rows = np.repeat(np.arange(len(leaves)), t.count[leaves])
            rank = np.arange(n) - np.repeat(t.start[leaves], t.count[leaves])
            self.pad, self.valid = np.zeros((d, len(leaves), L)), np.zeros((len(leaves), L), dtype=bool)
            self.pad[:, rows, rank], self.valid[rows, rank] = self.X64.T, True     # one (leaves, L) per coordinate
        else:                   # coordinates relative to the leaf's centre, for accurate matrix products
            owner = np.repeat(leaves, t.count[leaves])
            self.Xc = np.empty(X.shape, dtype=self.dtype)
            for i0 in range(0, n, 1 << 16):                     # by blocks: no (n, d) float64 temporaries
                self.Xc[i0:i0 + (1 << 16)] = self.X64[i0:i0 + (1 << 16)] - t.centre[owner[i0:i0 + (1 << 16)]]
            self.xc2 = np.einsum("ij,ij->i", self.Xc, self.Xc)
            self.eps = float(np.finfo(self.dtype).eps) * (d + 8)
        LOG.debug("mean shift tree: n=%d d=%d nodes=%d leaves=%d", n, d, len(t.start), len(leaves))

    def __call__(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chunks = [S[i:i + SEED_CHUNK] for i in range(0, len(S), SEED_CHUNK)]
        with single_thread_blas():
            if self.threads > 1 and len(chunks) > 1:
                with ThreadPoolExecutor(min(self.threads, len(chunks))) as pool:
                    parts = list(pool.map(self._chunk, chunks))
            else:
                parts = [self._chunk(c) for c in chunks]
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _chunk(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        S64 = S.astype(np.float64, copy=False)
        m, t = len(S64), self.tree
        acc = np.zeros((m, self.d + 2))       # weighted sum of points, sum of weights, points within bandwidth
        s, node = np.arange(m), np.zeros(m, dtype=np.int64)
        leaf_s, leaf_node = [], []
        while s.size:
            near, far = _distance_bounds(S64[s], t, node, ball=self.d > DIFF_MAX_DIM)
            keep = near <= self.reach * (1 + 1e-12)
            inside = (keep & (far <= self.bw * (1 - 1e-12)) if self.kernel == "flat"
                      else np.zeros_like(keep))
            if inside.any():
                si, ni = s[inside], node[inside]
                _scatter(acc, si, t.sums[ni], t.count[ni], t.count[ni])
            edge = keep & ~inside
            s, node = s[edge], node[edge]
            at_leaf = t.left[node] < 0
            leaf_s.append(s[at_leaf])
            leaf_node.append(node[at_leaf])
            s, node = np.repeat(s[~at_leaf], 2), (t.left[node[~at_leaf]][:, None] + np.array([0, 1])).ravel()
        ls, ln = np.concatenate(leaf_s), np.concatenate(leaf_node)
        if self.d <= DIFF_MAX_DIM:
            self._leaves_by_differences(S64, ls, ln, acc)
        else:
            self._leaves_by_products(S64, ls, ln, acc)
        return acc[:, self.d], acc[:, :self.d], np.rint(acc[:, self.d + 1]).astype(np.int64)

    def _weights(self, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kernel weights, within-bandwidth mask) of squared distances D."""
        within = D <= self.bw2
        if self.kernel == "flat":
            return within, within
        return np.where(D <= self.reach ** 2, np.exp(-0.5 * D / self.bw2), 0.0), within

    def _leaves_by_differences(self, S64, ls, ln, acc) -> None:
        """Adds the leaf points of the (seed ls, leaf ln) pairs, by float64 differences vectorised over pairs."""
        L = self.pad.shape[2]
        step = max(1, PAIR_BUDGET // (L * self.d))
        for p0 in range(0, len(ls), step):
            s, slots = ls[p0:p0 + step], self.slot[ln[p0:p0 + step]]
            P = [c[slots] for c in self.pad]                 # per coordinate, (pairs, L)
            D = np.zeros(P[0].shape)
            for k, c in enumerate(P):
                diff = c - S64[s, k][:, None]
                D += diff * diff
            D[~self.valid[slots]] = np.inf
            w, within = self._weights(D)
            w = w.astype(np.float64)
            wx = np.column_stack([np.einsum("pl,pl->p", w, c) for c in P])
            _scatter(acc, s, wx, w.sum(1), within.sum(1))

    def _leaves_by_products(self, S64, ls, ln, acc) -> None:
        """The same by one matrix product per leaf, on coordinates relative to the leaf's centre."""
        t = self.tree
        order = np.argsort(ln, kind="stable")
        ls, ln = ls[order], ln[order]
        cuts = np.flatnonzero(np.diff(ln)) + 1
        for j, rows in zip(ln[np.r_[0, cuts]] if ln.size else [], np.split(ls, cuts)):
            a, b = t.start[j], t.end[j]
            Sr = S64[rows]
            Sc = (Sr - t.centre[j]).astype(self.dtype)
            sc2 = np.einsum("ij,ij->i", Sc, Sc)
            D = sc2[:, None] + self.xc2[a:b][None, :] - 2 * (Sc @ self.Xc[a:b].T)
            tol = self.eps * (np.sqrt(sc2.astype(np.float64)) + t.radius[j]) ** 2
            within = _exact_le(D, self.bw2, tol, Sr, self.X64[a:b])
            if self.kernel == "flat":
                w, wsum = within.astype(self.dtype), within.sum(1)
            else:
                reach = _exact_le(D, self.reach ** 2, tol, Sr, self.X64[a:b])
                w = np.where(reach, np.exp(-0.5 * np.maximum(D, 0) / self.bw2), 0).astype(self.dtype)
                wsum = w.sum(1, dtype=np.float64)
            acc[rows] += np.column_stack([w @ self.Xs[a:b], wsum, within.sum(1)])   # rows: distinct seeds


def _distance_bounds(Sp: np.ndarray, t: Tree, node: np.ndarray, ball: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds of the distances from each seed Sp (p, d) to every point of its node (p,): from the
    node's box, and with `ball` the tighter of those and its bounding ball's (in the plane the box alone is
    tighter, measured), with a margin that covers their float64 rounding."""
    lo, hi = t.lo[node] - Sp, Sp - t.hi[node]          # > 0 where the seed is below / above the box
    gap = np.maximum(np.maximum(lo, hi), 0.0)
    span = np.maximum(-lo, -hi)                        # the farther face, per coordinate
    near, far = np.sqrt(np.einsum("ij,ij->i", gap, gap)), np.sqrt(np.einsum("ij,ij->i", span, span))
    if ball:
        diff = Sp - t.centre[node]
        dc, R = np.sqrt(np.einsum("ij,ij->i", diff, diff)), t.radius[node]
        near, far = np.maximum(dc - R, near), np.minimum(dc + R, far)
    return near * (1 - 1e-12), far * (1 + 1e-12)


def _exact_le(D: np.ndarray, thr: float, tol: np.ndarray, S64: np.ndarray, X64: np.ndarray) -> np.ndarray:
    """D <= thr for squared distances D (m, p) from a matrix product, every entry within tol (m,) of thr decided
    again from float64 differences of S64 (m, d) and X64 (p, d)."""
    hi, lo = (thr + tol)[:, None].astype(D.dtype), (thr - tol)[:, None].astype(D.dtype)
    out = D <= hi
    band = out & (D > lo)
    if band.any():
        ii, jj = np.nonzero(band)
        diff = S64[ii] - X64[jj]
        out[ii, jj] = np.einsum("ij,ij->i", diff, diff) <= thr
    return out


def _scatter(acc: np.ndarray, s: np.ndarray, wx: np.ndarray, wsum: np.ndarray, count: np.ndarray) -> None:
    """acc[s] += [wx, wsum, count] for seeds s (with repeats), in pair order (deterministic)."""
    m, d = len(acc), wx.shape[1]
    for k in range(d):
        acc[:, k] += np.bincount(s, weights=wx[:, k], minlength=m)
    acc[:, d] += np.bincount(s, weights=wsum, minlength=m)
    acc[:, d + 1] += np.bincount(s, weights=count, minlength=m)


_BLAS = {"lock": threading.Lock(), "users": 0, "saved": []}


@contextmanager
def single_thread_blas():
    """numpy's BLAS on one thread while any tree search runs (measured: its small per-leaf products ran 5-9x
    slower on the default threads, whose workers spin). Counted, so that concurrent fits (the server's Cluster
    calls) restore the thread counts once, after the last one; FAISS's own BLAS, used by searches, is left alone."""
    with _BLAS["lock"]:
        if _BLAS["users"] == 0:
            libs = [lc for lc in ThreadpoolController().select(user_api="blas").lib_controllers
                    if "faiss" not in str(lc.filepath)]
            _BLAS["saved"] = [(lc, lc.num_threads) for lc in libs]
            for lc, _ in _BLAS["saved"]:
                lc.set_num_threads(1)
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _BLAS["lock"]:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                for lc, n in _BLAS["saved"]:
                    lc.set_num_threads(n)


class ExactSums:
    """Neighbour sums for bandwidth 0: a seed's neighbours are the points equal to it (scikit-learn's radius-0
    search), so its mean is itself. Same shapes as TreeSums."""

    def __init__(self, X: np.ndarray):
        self.uniq, self.mult = np.unique(_void_rows(X), return_counts=True)

    def __call__(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = _void_rows(S)
        pos = np.clip(np.searchsorted(self.uniq, keys), 0, len(self.uniq) - 1)
        count = np.where(self.uniq[pos] == keys, self.mult[pos], 0).astype(np.int64)
        return count.astype(np.float64), S.astype(np.float64) * count[:, None], count


def _void_rows(A: np.ndarray) -> np.ndarray:
    """Each row of A (m, d) as one opaque value, for exact row matching (-0.0 counted as 0.0)."""
    A = np.ascontiguousarray(A + 0.0)
    return A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
