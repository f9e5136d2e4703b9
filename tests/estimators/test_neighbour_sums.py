"""The neighbour sums behind mean shift against a brute-force float64 reference: the kd-tree (both leaf paths, both
kernels, both dtypes, points exactly at the bandwidth), FAISS range search above the tree's dimensions, bandwidth 0."""
from __future__ import annotations

import numpy as np
import pytest

from simdex.estimators import cells
from simdex.estimators.brute import FaissSums
from simdex.estimators.cells import ExactSums, TreeSums


def reference(X, S, bw, kernel):
    """(sum of weights, weighted sum of points, points within bw) by float64 differences, every pair."""
    X64, S64 = X.astype(np.float64), S.astype(np.float64)
    D = ((S64[:, None, :] - X64[None, :, :]) ** 2).sum(-1)
    within = D <= bw * bw
    W = within * 1.0 if kernel == "flat" else np.exp(-0.5 * D / bw ** 2) * (D <= (3 * bw) ** 2)
    return W.sum(1), W @ X64, within.sum(1)


def data(n, d, seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (4, d))
    X = centres[rng.integers(0, 4, n)] + rng.standard_normal((n, d))
    return X, X[rng.choice(n, 300, replace=False)] + rng.uniform(-0.5, 0.5, (300, d))


def check(sums, X, S, bw, kernel):
    wsum, wx, count = sums(S)
    ref_w, ref_x, ref_n = reference(X, S, bw, kernel)
    np.testing.assert_array_equal(count, ref_n)
    np.testing.assert_allclose(wsum, ref_w, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(wx, ref_x, rtol=1e-5, atol=1e-4 * bw)


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, leaf", [(1, 8), (2, 16), (3, 64), (8, 128), (16, 256)])
def test_tree_sums_equal_brute_force(d, leaf, dtype, kernel):
    X, S = data(4000, d, seed=d)
    bw = 0.8 * np.sqrt(d)
    check(TreeSums(X.astype(dtype), bw, kernel, threads=2, leaf=leaf), X.astype(dtype), S.astype(dtype), bw, kernel)


@pytest.mark.parametrize("d", [2, 3])   # both leaf paths: differences (d <= 2) and products
def test_points_exactly_at_the_bandwidth_are_within(d):
    # an integer grid: many distances are exactly 2.0, which scikit-learn counts as within (<=)
    X = np.stack(np.meshgrid(*[np.arange(6.0)] * d), -1).reshape(-1, d)
    at_edge = (((X[:, None, :] - X[None, :, :]) ** 2).sum(-1) == 4.0).sum(1)
    assert at_edge.min() >= d   # the case is exercised: every point has neighbours exactly at the bandwidth
    _, _, count = TreeSums(X, 2.0, "flat", leaf=4)(X)
    _, _, ref_n = reference(X, X, 2.0, "flat")
    np.testing.assert_array_equal(count, ref_n)


def test_tree_sums_use_whole_cells_and_skip_far_ones():
    X, S = data(20000, 2, seed=5)
    sums = TreeSums(X, 1.5, "flat", leaf=16)
    seen = []
    original = sums._leaves_by_differences
    sums._leaves_by_differences = lambda S64, ls, ln, acc: (seen.append(len(ls)), original(S64, ls, ln, acc))
    check(sums, X, S, 1.5, "flat")
    leaves = len(sums.tree.leaves)
    assert sum(seen) < 0.1 * len(S) * leaves   # a small fraction of (seed, leaf) pairs is looked at point by point


def test_the_products_run_in_float64_when_float32_could_overflow():
    X, S = data(2000, 4, seed=3)
    X, S = (X * 1e17).astype(np.float32), (S * 1e17).astype(np.float32)
    sums = TreeSums(X, 1.5e17, "flat")
    assert sums.dtype == np.float64
    check(sums, X, S, 1.5e17, "flat")


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
def test_faiss_sums_above_the_tree_dimensions(kernel):
    X, S = data(3000, cells.TREE_MAX_DIM + 8, seed=7)
    X, S = X.astype(np.float32), S.astype(np.float32)
    bw = 0.9 * np.sqrt(X.shape[1])
    wsum, wx, count = FaissSums(X, bw, kernel)(S)
    ref_w, ref_x, ref_n = reference(X, S, bw, kernel)
    assert np.abs(count - ref_n).max() <= 1   # float32 distances: a point within rounding of the edge may flip
    np.testing.assert_allclose(wx.sum(1), ref_x.sum(1), rtol=2e-2)


def test_exact_sums_for_bandwidth_zero():
    X = np.array([[1.0, 2.0], [1.0, 2.0], [-0.0, 3.0], [5.0, 5.0]])
    wsum, wx, count = ExactSums(X)(np.array([[1.0, 2.0], [0.0, 3.0], [9.0, 9.0]]))
    np.testing.assert_array_equal(count, [2, 1, 0])
    np.testing.assert_array_equal(wx, [[2.0, 4.0], [0.0, 3.0], [0.0, 0.0]])
