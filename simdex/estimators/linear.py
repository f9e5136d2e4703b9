"""Linear estimators for heads, scikit-learn style: params in `__init__`, `fit` returns self, fitted state ends
in `_`, `predict*` check the dimension.

Every fitted estimator reduces to plain arrays: a classifier to softmax weights `coef_` (k, d) and `intercept_`
(k,), a projection to `coef_` (out, d) and `intercept_` (out,). Those arrays are what a head stores and serves;
no estimator object is ever persisted.

Training data may come as arrays or as a *batch source*: a callable returning a fresh iterator of
((b, d) float32, (b,) int64 class indices) batches, so the torch and ridge paths stream from the database and
never hold the whole training set in memory.
"""
from __future__ import annotations

import logging
import math
import warnings
from numbers import Integral, Real
from typing import Callable, Iterable, Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets

from simdex.errors import InvalidArgument
from simdex.estimators.validation import DomainParams, EstimatorError, check_data, check_fitted, domain_errors
from simdex.wire import as_matrix

LOG = logging.getLogger(__name__)
Batches = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def softmax_proba(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """(n, d) float32 -> (n, k) float32 class probabilities of a softmax linear model."""
    z = X.astype(np.float64) @ coef.T.astype(np.float64) + intercept
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def class_weights(counts: np.ndarray, balanced: bool) -> np.ndarray:
    """(k,) per-class sample weights: scikit-learn's "balanced" rule n / (k * count), or ones."""
    if not balanced:
        return np.ones(len(counts))
    return counts.sum() / (len(counts) * counts.astype(np.float64))


def _check(X, d: int | None = None) -> np.ndarray:
    return as_matrix(X, "vectors", d, allow_empty=True, dim_of="the head's input dimension")


class SklearnLogistic:
    """Multinomial logistic regression by scikit-learn's LogisticRegression (lbfgs), defaults C=1.0.

    `max_iter` is raised from 100 to 1000 so that lbfgs converges on unscaled features."""

    def __init__(self, C: float = 1.0, balanced: bool = False, max_iter: int = 1000):
        self.C, self.balanced, self.max_iter = C, balanced, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> "SklearnLogistic":
        from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

        X = _check(X)
        m = LogisticRegression(C=self.C, class_weight="balanced" if self.balanced else None,
                               max_iter=self.max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m.fit(X, y)
        self.n_iter_ = int(np.max(m.n_iter_))
        coef, b = m.coef_.astype(np.float32), m.intercept_.astype(np.float32)
        if n_classes == 2:  # one logit z for class 1 -> softmax over [-z/2, z/2] gives the same sigmoid
            coef, b = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-b / 2, b / 2])
        self.coef_, self.intercept_ = np.ascontiguousarray(coef), np.ascontiguousarray(b)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_proba(_check(X, self.coef_.shape[1]), self.coef_, self.intercept_)


class TorchLogistic(DomainParams, ClassifierMixin, BaseEstimator):
    """The same model as a torch nn.Linear: cross-entropy plus the L2 penalty of LogisticRegression(C),
    i.e. mean loss + ||W||^2 / (2 C n) (the bias is not penalised), with the same "balanced" class weights.

    solver "adam": mini-batches (`batch_size`) for `epochs` passes, cosine-decayed learning rate `lr`;
    solver "lbfgs": full-batch L-BFGS whose loss and gradient are accumulated batch by batch (`max_iter` steps).
    Runs on CUDA when torch sees a GPU (`device="auto"`).

    A scikit-learn classifier (check_estimator passes, tests/estimators/test_sklearn_contract.py): fit(X, y) takes
    any labels (classes_ is their sorted set); fit(X, y, n_classes) takes class indices 0..n_classes-1, as the
    heads do; fit_batches trains from a batch source. Fitted: coef_ (k, d) float32, intercept_ (k,) float32,
    classes_ (k,), n_features_in_, n_iter_."""

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "balanced": ["boolean"],
        "solver": [StrOptions({"adam", "lbfgs"})],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "seed": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, C: float = 1.0, balanced: bool = False, solver: str = "adam", epochs: int = 100,
                 batch_size: int = 256, lr: float = 0.02, max_iter: int = 200, device: str = "auto",
                 seed: int = 0):
        self.C, self.balanced, self.solver, self.epochs = C, balanced, solver, epochs
        self.batch_size, self.lr, self.max_iter, self.device, self.seed = batch_size, lr, max_iter, device, seed

    def _device(self):
        import torch  # noqa: PLC0415

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, n_classes: int | None = None) -> "TorchLogistic":
        """Fit X (n, d) to labels y (n,): any labels, or class indices 0..n_classes-1 when n_classes is given."""
        X, y = check_data(self, X, y, reset=True)
        X = X.astype(np.float32, copy=False)
        with domain_errors():
            check_classification_targets(y)
        if n_classes is None:
            classes, y = np.unique(y, return_inverse=True)
        else:
            classes, y = np.arange(n_classes), np.asarray(y)
            if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n_classes:
                raise EstimatorError(f"with n_classes={n_classes}, y must hold class indices 0..{n_classes - 1}; "
                                     f"got values in [{y.min()}, {y.max()}]")
        y = y.astype(np.int64)
        rng = np.random.default_rng(self.seed)

        def batches():  # shuffled each pass, like the database source
            order = rng.permutation(len(X))
            for s in range(0, len(X), self.batch_size):
                j = order[s:s + self.batch_size]
                yield X[j], y[j]

        self.fit_batches(batches, X.shape[1], len(classes), np.bincount(y, minlength=len(classes)))
        self.classes_ = classes
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_batches(self, batches: Batches, d: int, n_classes: int, counts: np.ndarray) -> "TorchLogistic":
        """Fit from a batch source; `counts`: (k,) training items per class (for the penalty and weights)."""
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415

        dev = self._device()
        torch.manual_seed(self.seed)
        n = int(counts.sum())
        lam = 1.0 / (self.C * n)
        w = torch.as_tensor(class_weights(counts, self.balanced), dtype=torch.float32, device=dev)
        lin = torch.nn.Linear(d, n_classes).to(dev)
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)

        def batch_loss(xb, yb, scale: float):
            xb = torch.from_numpy(np.array(xb, dtype=np.float32)).to(dev)  # own, writable copy
            yb = torch.from_numpy(np.asarray(yb, dtype=np.int64)).to(dev)
            return F.cross_entropy(lin(xb), yb, weight=w, reduction="sum") * scale

        def penalty():
            return 0.5 * lam * (lin.weight ** 2).sum()

        fit = self._fit_lbfgs if self.solver == "lbfgs" else self._fit_adam
        self.n_iter_ = fit(lin, batches, batch_loss, penalty, n)
        self.coef_ = lin.weight.detach().cpu().numpy().astype(np.float32)
        self.intercept_ = lin.bias.detach().cpu().numpy().astype(np.float32)
        self.classes_, self.n_features_in_ = np.arange(n_classes), d
        return self

    def _fit_lbfgs(self, lin, batches: Batches, batch_loss, penalty, n: int) -> int:
        """Full-batch L-BFGS over the mean loss; returns the iterations run."""
        import torch  # noqa: PLC0415

        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-6,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            total = penalty()
            total.backward()
            total = float(total.detach())
            for xb, yb in batches():  # the gradient accumulates over the whole set, batch by batch
                loss = batch_loss(xb, yb, 1.0 / n)
                loss.backward()
                total += float(loss.detach())
            return torch.tensor(total)

        opt.step(closure)
        return int(opt.state[opt._params[0]].get("n_iter", 0))

    def _fit_adam(self, lin, batches: Batches, batch_loss, penalty, n: int) -> int:
        """Mini-batch Adam with a cosine-decayed learning rate; returns the epochs run."""
        import torch  # noqa: PLC0415

        opt = torch.optim.Adam(lin.parameters(), lr=self.lr)
        steps = max(1, self.epochs * math.ceil(n / self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(self.epochs):
            for xb, yb in batches():
                # per-batch mean of the weighted loss, plus the penalty: unbiased for the full objective
                loss = batch_loss(xb, yb, 1.0 / len(yb)) + penalty()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return self.epochs

    def predict_proba(self, X) -> np.ndarray:
        """(n, d) -> (n, k) float32 class probabilities, columns in classes_ order."""
        check_fitted(self)
        X = check_data(self, X, reset=False)
        return softmax_proba(X, self.coef_, self.intercept_)

    def predict(self, X) -> np.ndarray:
        """(n, d) -> (n,) the most probable class of each row (from classes_)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]


class RidgeProjection:
    """Linear map Y ~ X W^T + b by ridge regression (scikit-learn Ridge's objective, intercept unpenalised),
    solved in closed form from sufficient statistics accumulated batch by batch in float64."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "RidgeProjection":
        return self.fit_batches(lambda: iter([(_check(X), _check(Y))]))

    def fit_batches(self, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> "RidgeProjection":
        n, sx, sy, xx, xy = 0, None, None, None, None
        for xb, yb in batches():
            xb, yb = xb.astype(np.float64), yb.astype(np.float64)
            if sx is None:
                sx, sy = np.zeros(xb.shape[1]), np.zeros(yb.shape[1])
                xx, xy = np.zeros((xb.shape[1],) * 2), np.zeros((xb.shape[1], yb.shape[1]))
            n += len(xb)
            sx += xb.sum(0)
            sy += yb.sum(0)
            xx += xb.T @ xb
            xy += xb.T @ yb
        if not n:
            raise InvalidArgument("ridge projection: no training pairs")
        mx, my = sx / n, sy / n
        cxx = xx - n * np.outer(mx, mx) + self.alpha * np.eye(len(mx))
        cxy = xy - n * np.outer(mx, my)
        W = np.linalg.solve(cxx, cxy)                    # (d, out)
        self.coef_ = np.ascontiguousarray(W.T, dtype=np.float32)
        self.intercept_ = (my - mx @ W).astype(np.float32)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _check(X, self.coef_.shape[1])
        return project(X, self.coef_, self.intercept_)


def project(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """(n, d) float32 -> (n, out) float32: X coef^T + intercept."""
    return (X.astype(np.float64) @ coef.T.astype(np.float64) + intercept).astype(np.float32)
