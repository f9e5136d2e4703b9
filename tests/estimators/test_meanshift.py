"""simdex.estimators.meanshift.MeanShift against scikit-learn's MeanShift on seeded blobs, the lecture's failure case,
bandwidth estimation, input validation, and the torch (GPU) code path against the CPU ones (the kd-tree up to 16-d,
FAISS above) on CPU tensors."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import cluster as skc
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from simdex.errors import InvalidArgument
from simdex.estimators.meanshift import MeanShift, estimate_bandwidth


def blobs(n, d, centers, std, seed):
    X, y = make_blobs(n_samples=n, n_features=d, centers=centers, cluster_std=std, random_state=seed)
    return X.astype("float32"), y


# (n, d, centers, cluster_std, bandwidth): n > 1000 so the default max_seeds sampling is what gets compared.
SETS = {"2d": (1500, 2, 4, 0.8, 2.0), "16d": (1500, 16, 5, 1.0, 7.0)}


@pytest.fixture(scope="module", params=sorted(SETS))
def fitted(request):
    n, d, centers, std, bw = SETS[request.param]
    X, _ = blobs(n, d, centers, std, seed=3)
    return X, bw, skc.MeanShift(bandwidth=bw).fit(X)


def test_matches_sklearn_default(fitted):
    X, bw, sk = fitted
    ms = MeanShift(bandwidth=bw, device="cpu").fit(X)
    assert len(ms.cluster_centers_) == len(sk.cluster_centers_)
    assert adjusted_rand_score(sk.labels_, ms.labels_) >= 0.99
    assert ms.labels_.shape == (len(X),) and ms.cluster_centers_.dtype == np.float32


def test_every_point_seeded_matches_sklearn_exactly(fitted):
    X, bw, sk = fitted
    ms = MeanShift(bandwidth=bw, max_seeds=None, device="cpu").fit(X)
    np.testing.assert_allclose(ms.cluster_centers_, sk.cluster_centers_, atol=1e-3 * bw)
    np.testing.assert_array_equal(ms.labels_, sk.labels_)
    assert ms.n_iter_ == sk.n_iter_


def test_predict_matches_sklearn(fitted):
    X, bw, sk = fitted
    ms = MeanShift(bandwidth=bw, max_seeds=None, device="cpu").fit(X)
    Xq = np.random.default_rng(1).uniform(X.min(0), X.max(0), (500, X.shape[1])).astype("float32")
    np.testing.assert_array_equal(ms.predict(Xq), sk.predict(Xq))


def test_bin_seeding_matches_sklearn():
    X, _ = blobs(4000, 2, 5, 0.8, seed=5)
    for freq in (1, 5):
        sk = skc.MeanShift(bandwidth=1.5, bin_seeding=True, min_bin_freq=freq).fit(X)
        ms = MeanShift(bandwidth=1.5, bin_seeding=True, min_bin_freq=freq, device="cpu").fit(X)
        np.testing.assert_allclose(ms.cluster_centers_, sk.cluster_centers_, atol=1e-3)
        np.testing.assert_array_equal(ms.labels_, sk.labels_)
        assert ms.n_iter_ == sk.n_iter_


def test_cluster_all_false_matches_sklearn():
    X, _ = blobs(3000, 2, 4, 0.6, seed=2)
    noise = np.random.default_rng(0).uniform(-30, 30, (200, 2)).astype("float32")
    X = np.vstack([X, noise])
    sk = skc.MeanShift(bandwidth=1.5, bin_seeding=True, cluster_all=False).fit(X)
    ms = MeanShift(bandwidth=1.5, bin_seeding=True, cluster_all=False, device="cpu").fit(X)
    assert (sk.labels_ == -1).sum() > 50  # the case is exercised
    np.testing.assert_array_equal(ms.labels_, sk.labels_)


def test_explicit_seeds_match_sklearn():
    X, _ = blobs(2000, 3, 3, 0.7, seed=4)
    seeds = X[::40]
    sk = skc.MeanShift(bandwidth=2.0, seeds=seeds).fit(X)
    ms = MeanShift(bandwidth=2.0, seeds=seeds, device="cpu").fit(X)
    np.testing.assert_allclose(ms.cluster_centers_, sk.cluster_centers_, atol=2e-3)
    np.testing.assert_array_equal(ms.labels_, sk.labels_)


def lecture_data():
    """The notebooks' data at the k-NN section's size: 6 clusters x 2,500 points, centroids uniform(-35, 35),
    covariance diag(5, 5). Seed 7 keeps the centroids >= 17 apart (8 standard deviations), so 6 is the answer."""
    rng = np.random.RandomState(7)
    centroids = rng.uniform(-35, 35, (6, 2))
    X = np.vstack([rng.multivariate_normal(c, np.diag([5.0, 5.0]), 2500) for c in centroids])
    return X.astype("float32"), np.repeat(np.arange(6), 2500)


@pytest.mark.parametrize("kernel, bandwidth", [("gaussian", 2.5), ("flat", 5.0)])
def test_lecture_failure_regression(kernel, bandwidth):
    # k=50 neighbours of the moving points broke each cluster into ~50-point blobs (hundreds of modes);
    # the kernel's full reach over the original points finds the 6 clusters.
    X, y = lecture_data()
    ms = MeanShift(bandwidth=bandwidth, kernel=kernel, device="cpu").fit(X)
    assert len(ms.cluster_centers_) == 6
    assert adjusted_rand_score(y, ms.labels_) >= 0.99


def test_estimated_bandwidth_matches_sklearn_on_same_sample():
    X, _ = blobs(20000, 8, 6, 1.5, seed=6)
    ours = estimate_bandwidth(X, n_samples=3000, random_state=0)
    ref = skc.estimate_bandwidth(X, n_samples=3000, random_state=0)
    assert abs(ours - ref) <= 0.1 * ref


def test_fit_estimates_bandwidth_like_sklearn():
    X, _ = blobs(2000, 4, 3, 1.0, seed=8)  # below the estimation sample: every point is used, as sklearn does
    ms = MeanShift(device="cpu").fit(X)
    ref = skc.estimate_bandwidth(X)
    assert abs(ms.bandwidth_ - ref) <= 0.1 * ref
    assert len(ms.cluster_centers_) == len(skc.MeanShift(bandwidth=ms.bandwidth_, bin_seeding=True).fit(X)
                                           .cluster_centers_)


@pytest.mark.parametrize("kernel", ["flat", "gaussian"])
@pytest.mark.parametrize("d", [2, 16, 24])
def test_torch_path_equals_faiss_path(kernel, d):
    X, _ = blobs(2000, d, 4, 1.0, seed=9)
    bw = 2.0 if d == 2 else 6.0 if d == 16 else 7.0
    a = MeanShift(bandwidth=bw, kernel=kernel, device="cpu", max_seeds=300).fit(X)
    b = MeanShift(bandwidth=bw, kernel=kernel, device="torch-cpu", max_seeds=300).fit(X)
    assert len(a.cluster_centers_) == len(b.cluster_centers_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-2 * bw)
    assert adjusted_rand_score(a.labels_, b.labels_) == 1.0


@pytest.mark.parametrize("bad", [
    lambda X: MeanShift(bandwidth=1.0).fit(np.where(np.arange(len(X))[:, None] == 3, np.nan, X)),
    lambda X: MeanShift(bandwidth=1.0).fit(X[None]),
    lambda X: MeanShift(bandwidth=1.0).fit(np.zeros((0, 2), dtype="float32")),
    lambda X: MeanShift(bandwidth=1.0, device="cpu").fit(X).predict(np.zeros((3, 5), dtype="float32")),
    lambda X: MeanShift(bandwidth=0.0).fit(X),
    lambda X: MeanShift(bandwidth=-1.0).fit(X),
    lambda X: MeanShift(bandwidth=1.0, kernel="epanechnikov").fit(X),
    lambda X: MeanShift(bandwidth=1.0, device="tpu").fit(X),
    lambda X: MeanShift(bandwidth=1.0, max_iter=-1).fit(X),
    lambda X: MeanShift(bandwidth=1.0, seeds=np.zeros((4, 3))).fit(X),
    lambda X: MeanShift(bandwidth=1.0).predict(X),
], ids=["nan", "3d", "empty", "predict-dim", "bw0", "bw-neg", "kernel", "device", "max_iter", "seeds-dim",
        "not-fitted"])
def test_bad_input_raises_invalid_argument(bad):
    X, _ = blobs(200, 2, 2, 1.0, seed=0)
    with pytest.raises(InvalidArgument):
        bad(X)


def test_error_message_names_the_bad_value():
    with pytest.raises(InvalidArgument, match="epanechnikov"):
        MeanShift(bandwidth=1.0, kernel="epanechnikov").fit(np.zeros((3, 2)))
    with pytest.raises(InvalidArgument, match=r"\(1, 3, 2\)"):
        MeanShift(bandwidth=1.0).fit(np.zeros((1, 3, 2)))
