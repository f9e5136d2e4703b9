"""Input and parameter checks shared by simdex's scikit-learn estimators, and their one error type.

The estimators validate through scikit-learn's own helpers (`validate_data`, `_parameter_constraints`,
`check_is_fitted`), so callers get the errors and messages scikit-learn users expect. Each such error is re-raised
as a simdex domain error that is ALSO the scikit-learn class (`ValueError`, `InvalidParameterError`,
`NotFittedError`): `except ValueError` keeps working, and the server still maps it to INVALID_ARGUMENT.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from simdex.errors import InvalidArgument

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn < 1.6: the same check was a method
    def validate_data(estimator, X="no_validation", y="no_validation", reset=True, **check_params):
        return estimator._validate_data(X, y, reset=reset, **check_params)


class EstimatorError(InvalidArgument, ValueError):
    """Bad input to a simdex estimator: a ValueError for scikit-learn callers, INVALID_ARGUMENT on the server."""


class ParameterError(EstimatorError, InvalidParameterError):
    """A constructor parameter outside its constraints (scikit-learn's InvalidParameterError, message unchanged)."""


class NotFitted(EstimatorError, NotFittedError):
    """predict (or similar) before fit: scikit-learn's NotFittedError."""


@contextmanager
def domain_errors(shape=None):
    """Re-raise scikit-learn's ValueErrors (bad data) as EstimatorError with the same message, naming the shape of
    the input when it is known. TypeErrors (sparse input, objects) pass unchanged."""
    try:
        yield
    except (EstimatorError, NotFittedError, InvalidParameterError):
        raise
    except ValueError as exc:
        suffix = f" (input of shape {shape})" if shape is not None else ""
        raise EstimatorError(f"{exc}{suffix}") from None


def shape_of(x) -> tuple | None:
    """np.shape of an array-like, or None when it has none (ragged lists, exotic objects)."""
    try:
        return np.shape(x)
    except (ValueError, TypeError):
        return None


def check_data(estimator, X, y="no_validation", *, reset: bool, **check_params):
    """scikit-learn's validate_data (dtype float64/float32, finite, 2-d, at least one sample and feature; with
    `reset=False` the feature count must match the fitted one), raising EstimatorError."""
    check_params.setdefault("dtype", [np.float64, np.float32])
    with domain_errors(shape_of(X)):
        return validate_data(estimator, X, y, reset=reset, **check_params)


def check_fitted(estimator) -> None:
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise NotFitted(str(exc)) from None


class DomainParams:
    """Mixin for a BaseEstimator: parameter validation (run by `_fit_context`) raises ParameterError."""

    def _validate_params(self):
        try:
            super()._validate_params()
        except InvalidParameterError as exc:
            raise ParameterError(str(exc)) from None


def effective_threads(n_jobs) -> int:
    """Threads for n_jobs as scikit-learn reads it: None -> 1 (unless inside joblib.parallel_config), -1 -> every
    core, -2 -> all but one."""
    from joblib import effective_n_jobs  # noqa: PLC0415

    try:
        return max(1, int(effective_n_jobs(n_jobs)))
    except ValueError as exc:  # n_jobs == 0
        raise ParameterError(f"n_jobs={n_jobs!r}: {exc}; use None, -1 (every core) or a count >= 1") from None
