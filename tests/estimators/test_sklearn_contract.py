"""simdex's estimators keep scikit-learn's contract: check_estimator, the estimator API (clone, set_params,
pipelines, grid search), errors that are ValueErrors and domain errors at once, dtypes, degenerate data, n_jobs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import cluster as skc
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_estimator

from simdex.errors import InvalidArgument
from simdex.estimators.linear import TorchLogistic
from simdex.estimators.meanshift import MeanShift, estimate_bandwidth, get_bin_seeds, mean_shift

# check -> why it is expected to fail. Empty: every check passes (the environment may skip some, e.g. array API).
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {"MeanShift": {}, "TorchLogistic": {}}


def blobs(n=300, d=2, seed=0, dtype=np.float64):
    X, y = make_blobs(n_samples=n, n_features=d, centers=3, cluster_std=0.5, random_state=seed)
    return X.astype(dtype), y


@pytest.mark.parametrize("estimator", [MeanShift(), TorchLogistic()], ids=lambda e: type(e).__name__)
def test_check_estimator_passes(estimator):
    name = type(estimator).__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, expected_failed_checks=EXPECTED_FAILED_CHECKS[name], on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_estimator_api_clone_pipeline_and_grid_search():
    X, y = blobs()
    ms = MeanShift(bandwidth=1.0).set_params(cluster_all=False, n_jobs=2)
    assert clone(ms).get_params() == ms.get_params() and ms.get_params()["n_jobs"] == 2
    labels = make_pipeline(StandardScaler(), MeanShift(bandwidth=1.0)).fit_predict(X)
    assert len(set(labels.tolist())) == 3
    search = GridSearchCV(make_pipeline(StandardScaler(), TorchLogistic(epochs=20)),
                          {"torchlogistic__C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.9


def test_errors_are_value_errors_and_invalid_argument():
    X, _ = blobs()
    with pytest.raises(InvalidParameterError) as err:
        MeanShift(bandwidth=-1.0).fit(X)
    assert isinstance(err.value, InvalidArgument) and isinstance(err.value, ValueError)
    with pytest.raises(NotFittedError) as err:
        MeanShift().predict(X)
    assert isinstance(err.value, InvalidArgument)
    with pytest.raises(ValueError, match="No point was within bandwidth=0.1") as err:
        MeanShift(bandwidth=0.1, seeds=[[-90.0, -90.0]]).fit(X)
    assert isinstance(err.value, InvalidArgument)
    with pytest.raises(InvalidArgument, match=r"NaN.*shape \(300, 2\)"):
        MeanShift().fit(np.where(np.arange(300)[:, None] == 7, np.nan, X))
    with pytest.raises(InvalidArgument, match="quantile"):
        estimate_bandwidth(X, quantile=2.0)


@pytest.mark.parametrize("dtype, kept", [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float64)])
def test_the_input_dtype_is_kept(dtype, kept):
    X, _ = blobs(dtype=np.float64)
    X = (X * 10).astype(dtype)
    for kernel in ("flat", "gaussian"):
        ms = MeanShift(bandwidth=10.0, kernel=kernel).fit(X)
        assert ms.cluster_centers_.dtype == kept and ms.labels_.dtype == np.int64
    centres, labels = mean_shift(X, bandwidth=10.0)
    assert centres.dtype == kept and len(labels) == len(X)


def test_float64_centres_are_float64_means():
    # the data's own precision survives: centres of float64 data are not rounded through float32
    X = np.array([[0.0, 0.0], [1e-9, 0.0], [2e-9, 0.0], [1.0, 1.0]]) + 1.0
    ms = MeanShift(bandwidth=0.5).fit(X)
    np.testing.assert_allclose(ms.cluster_centers_[0], [1.0 + 1e-9, 1.0], rtol=0, atol=1e-15)


def test_zero_bandwidth_clusters_equal_points():
    X = np.array([1, 1, 1, 2, 2, 2, 3, 3], dtype=np.float64).reshape(-1, 1)
    assert estimate_bandwidth(X) == 0 and get_bin_seeds(X, 0) is X
    for ms in (MeanShift().fit(X), MeanShift(bin_seeding=True).fit(X), MeanShift(cluster_all=False).fit(X)):
        np.testing.assert_array_equal(ms.cluster_centers_.ravel(), [2.0, 1.0, 3.0])   # by intensity, then value
        np.testing.assert_array_equal(ms.labels_, [1, 1, 1, 0, 0, 0, 2, 2])
        assert ms.n_iter_ == 0 and ms.bandwidth_ == 0


@pytest.mark.parametrize("X", [np.ones((10, 3)), np.array([[4.0, 2.0]])], ids=["constant", "one-sample"])
def test_constant_and_one_sample_data_as_scikit_learn(X):
    ms, sk = MeanShift().fit(X), skc.MeanShift().fit(X)
    np.testing.assert_array_equal(ms.cluster_centers_, sk.cluster_centers_)
    np.testing.assert_array_equal(ms.labels_, sk.labels_)
    assert ms.n_iter_ == sk.n_iter_


def test_results_do_not_depend_on_n_jobs():
    X, _ = make_blobs(n_samples=3000, n_features=2, centers=5, random_state=1)   # > 1 chunk of seeds
    one = MeanShift(bandwidth=1.5, n_jobs=1).fit(X)
    for n_jobs in (2, -1):
        other = MeanShift(bandwidth=1.5, n_jobs=n_jobs).fit(X)
        np.testing.assert_array_equal(other.cluster_centers_, one.cluster_centers_)
        np.testing.assert_array_equal(other.labels_, one.labels_)
    with pytest.raises(InvalidArgument, match="n_jobs=0"):
        MeanShift(n_jobs=0).fit(X)


def test_torch_logistic_takes_any_labels_and_class_indices():
    X, y = blobs(seed=2)
    names = np.array(["ant", "bee", "cat"])[y]
    clf = TorchLogistic(epochs=30).fit(X, names)
    assert list(clf.classes_) == ["ant", "bee", "cat"] and (clf.predict(X) == names).mean() > 0.95
    heads = TorchLogistic(epochs=30).fit(X, y, 4)   # the heads' form: indices, one class never seen
    assert heads.coef_.shape == (4, 2) and heads.predict_proba(X).shape == (300, 4)
    with pytest.raises(InvalidArgument, match="class indices 0..1"):
        TorchLogistic().fit(X, y, 2)
