"""Training the linear heads: the jobs behind TrainHead, on a collection's stored vectors.

Classifier heads ("logistic": scikit-learn, in memory; "torch-logistic": a torch linear layer streaming batches
from the database, GPU when present) learn labels from a metadata field or an explicit {id: label} map.
Projection heads ("projection") fit a ridge map from one collection's space into another's over the ids both hold.

The split is reproducible: labelled items sorted by external id, then scikit-learn's
`train_test_split(test_size=test_fraction, stratify=labels, random_state=seed)` (not stratified for projections).
Items without the label field (or with null) are skipped and counted in metrics["n_unlabelled"].
Specs arrive checked (service/heads.check_spec).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from simdex.errors import FailedPrecondition, NotFound
from simdex.estimators.linear import RidgeProjection, SklearnLogistic, TorchLogistic, softmax_proba
from simdex.service.collection import Collection
from simdex.store import filters
from simdex.store.heads import HeadRecord
from simdex.store.items import Store
from simdex.types import HeadSpec

LOG = logging.getLogger(__name__)
READ_BATCH = 4096
TOP1_SAMPLE = 2000      # held-out pairs scored for projection retrieval top-1


# ---- reading the training set -----------------------------------------------------------------------------------
def _items(col: Collection, spec_filter: str) -> tuple[np.ndarray, list[str]]:
    return col.listing(filters.parse(spec_filter))[1:]


def _check_label(item: str, v) -> None:
    if not isinstance(v, (int, str)):  # bool is an int: allowed, and kept apart from ints below
        raise FailedPrecondition(f"item {item!r}: label {v!r} is a {type(v).__name__}; labels must be integers, "
                                 "strings or booleans")


def labelled(col: Collection, store: Store, s: HeadSpec) -> tuple[np.ndarray, list[str], list, int]:
    """-> ((n,) int64 iids, ids, labels, unlabelled count), sorted by external id."""
    iids, ext = _items(col, s.filter)
    what = f"collection {col.name!r}" + (" (items matching the filter)" if s.filter else "")
    if s.labels is not None:
        where = dict(zip(ext, iids.tolist()))
        every = set(store.live(col.info.id)[1]) if s.filter else where
        unknown = [i for i in s.labels if i not in every]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise NotFound(f"labels: {len(unknown)} id(s) not in collection {col.name!r}: {shown}")
        pairs = [(i, where[i], v) for i, v in s.labels.items() if i in where and v is not None]
        unlabelled = sum(v is None for i, v in s.labels.items() if i in where)
    else:
        metas = store.metadata(col.info.id, iids.tolist())
        pairs = [(e, int(i), metas.get(int(i), {}).get(s.label_field)) for e, i in zip(ext, iids)]
        pairs = [p for p in pairs if p[2] is not None]
        unlabelled = len(iids) - len(pairs)
        if not pairs:
            raise FailedPrecondition(f"no item of {what} has metadata field {s.label_field!r} ({len(iids)} items "
                                     "looked at); check the field name")
    if not pairs:
        raise FailedPrecondition(f"none of the labelled ids are in {what}, with a label")
    pairs.sort(key=lambda p: p[0])
    for e, _, v in pairs:
        _check_label(e, v)
    types = {type(v) for _, _, v in pairs}
    if len(types) > 1:
        raise FailedPrecondition(f"labels mix {sorted(t.__name__ for t in types)}; use one type for every label")
    return (np.array([p[1] for p in pairs], dtype=np.int64), [p[0] for p in pairs], [p[2] for p in pairs],
            unlabelled)


def split(n: int, test_fraction: float, seed: int, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions) of n items: stratified by y when given, seeded."""
    if test_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    try:
        tr, te = train_test_split(np.arange(n), test_size=test_fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise FailedPrecondition(f"cannot hold out test_fraction={test_fraction} of {n} items: {exc} "
                                 "(label more items, or use test_fraction=0)") from None
    return np.sort(tr), np.sort(te)


def batches(store: Store, cid: int, dim: int, iids: np.ndarray, y: np.ndarray, size: int, rng=None):
    """A batch source over the database: each call yields ((b, dim) float32, (b,) int64) in (shuffled) order."""
    def source():
        order = rng.permutation(len(iids)) if rng is not None else np.arange(len(iids))
        for s in range(0, len(order), size):
            j = order[s:s + size]
            found, xb = store.vectors(cid, dim, iids[j])
            if len(xb):
                yield xb, y[j][found]
    return source


def predict_batches(coef, intercept, source) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) over a batch source."""
    ys, ps = [], []
    for xb, yb in source():
        ps.append(softmax_proba(xb, coef, intercept).argmax(1))
        ys.append(yb)
    return np.concatenate(ys), np.concatenate(ps)


# ---- training ----------------------------------------------------------------------------------------------------
def train_classifier(col: Collection, store: Store, s: HeadSpec, fingerprint: str) -> HeadRecord:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score  # noqa: PLC0415

    iids, _, labels, unlabelled = labelled(col, store, s)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise FailedPrecondition(f"all {len(labels)} labelled items have the one class {classes[0]!r}; a classifier "
                                 "needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    seed = s.params.get("seed", 0)
    tr, te = split(len(y), s.test_fraction, seed, y)
    dim, k, p = col.info.dim, len(classes), dict(s.params)
    p.pop("seed", None)
    if s.kind == "logistic":
        found, X = store.vectors(col.info.id, dim, iids[tr])
        y_tr = y[tr][found]
        est = SklearnLogistic(balanced=s.balanced, **p).fit(X, y_tr, k)
        train_pred = est.predict_proba(X).argmax(1)
    else:
        counts = np.bincount(y[tr], minlength=k)
        size = p.get("batch_size", 256)
        est = TorchLogistic(balanced=s.balanced, seed=seed, **p).fit_batches(
            batches(store, col.info.id, dim, iids[tr], y[tr], size, np.random.default_rng(seed)), dim, k, counts)
        y_tr, train_pred = predict_batches(est.coef_, est.intercept_,
                                           batches(store, col.info.id, dim, iids[tr], y[tr], READ_BATCH))
    metrics: dict[str, Any] = {"n_train": int(len(y_tr)), "n_test": 0, "n_unlabelled": int(unlabelled),
                               "n_classes": k, "train_accuracy": float(accuracy_score(y_tr, train_pred)),
                               "n_iter": int(est.n_iter_)}
    if len(te):
        y_te, pred = predict_batches(est.coef_, est.intercept_,
                                     batches(store, col.info.id, dim, iids[te], y[te], READ_BATCH))
        metrics.update(n_test=int(len(y_te)), accuracy=float(accuracy_score(y_te, pred)),
                       macro_f1=float(f1_score(y_te, pred, average="macro", labels=np.arange(k), zero_division=0)),
                       confusion=confusion_matrix(y_te, pred, labels=np.arange(k)).tolist())
    return HeadRecord(s.head, col.name, s.kind, classes, metrics, _params(s), int(len(y_tr)), fingerprint, dim, k,
                      collection_id=col.info.id, coef=est.coef_, intercept=est.intercept_)


def train_projection(col: Collection, target: Collection, store: Store, s: HeadSpec, fingerprints) -> HeadRecord:
    a_iids, a_ext = _items(col, s.filter)
    b_iids, b_ext = _items(target, "")
    b_where = dict(zip(b_ext, b_iids.tolist()))
    pairs = sorted((e, int(i), b_where[e]) for e, i in zip(a_ext, a_iids) if e in b_where)
    if len(pairs) < 2:
        raise FailedPrecondition(f"collections {col.name!r} and {target.name!r} share {len(pairs)} id(s); a "
                                 "projection head is fitted on the ids present in both (at least 2)")
    ia = np.array([p[1] for p in pairs], dtype=np.int64)
    ib = np.array([p[2] for p in pairs], dtype=np.int64)
    tr, te = split(len(pairs), s.test_fraction, s.params.get("seed", 0))
    da, db = col.info.dim, target.info.dim

    def source(rows):
        def gen():
            for i in range(0, len(rows), READ_BATCH):
                j = rows[i:i + READ_BATCH]
                fa, xa = store.vectors(col.info.id, da, ia[j])
                fb, xb = store.vectors(target.info.id, db, ib[j])
                both = fa & fb  # a pair loses either side to a concurrent delete: skip it
                yield xa[both[fa]], xb[both[fb]]
        return gen

    est = RidgeProjection(alpha=s.params.get("alpha", 1.0)).fit_batches(source(tr))
    metrics: dict[str, Any] = {"n_train": int(len(tr)), "n_test": int(len(te)), "n_pairs": len(pairs)}
    if len(te):
        metrics.update(projection_metrics(est, source(te), target.info.metric))
    return HeadRecord(s.head, col.name, s.kind, [], metrics, _params(s), int(len(tr)), fingerprints[0], da, db,
                      target.name, fingerprints[1], collection_id=col.info.id, target_id=target.info.id,
                      coef=est.coef_, intercept=est.intercept_)


def projection_metrics(est: RidgeProjection, source, metric: str) -> dict:
    """Held-out r2 (uniform over outputs), mse, mean cosine and retrieval top-1 among the held-out targets."""
    P, Y = map(np.concatenate, zip(*((est.predict(xa), yb) for xa, yb in source())))
    P64, Y64 = P.astype(np.float64), Y.astype(np.float64)
    ss_res = ((Y64 - P64) ** 2).sum(0)
    ss_tot = ((Y64 - Y64.mean(0)) ** 2).sum(0)
    r2 = float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, 1)))
    cos = (P64 * Y64).sum(1) / np.maximum(np.linalg.norm(P64, axis=1) * np.linalg.norm(Y64, axis=1), 1e-12)
    m = min(len(P), TOP1_SAMPLE)
    p, t = P64[:m], Y64[:m]
    if metric == "l2":
        S = -(((p ** 2).sum(1)[:, None]) - 2 * p @ t.T + (t ** 2).sum(1)[None, :])
    else:
        if metric == "cosine":
            p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
            t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        S = p @ t.T
    top1 = float((S.argmax(1) == np.arange(m)).mean())
    return {"r2": r2, "mse": float(np.mean((Y64 - P64) ** 2)), "mean_cosine": float(cos.mean()),
            "retrieval_top1": top1}


def _params(s: HeadSpec) -> dict:
    """The training request as stored with the head (the explicit label map is summarised, not copied)."""
    out = {"label_field": s.label_field, "filter": s.filter, "test_fraction": s.test_fraction,
           "balanced": s.balanced, **s.params}
    if s.labels is not None:
        out["labels"] = f"{len(s.labels)} explicit labels"
    return out
