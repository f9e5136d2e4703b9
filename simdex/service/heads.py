"""Linear heads in the service: TrainHead, GetHead, ListHeads, DeleteHead, Predict, and search through a
projection head. The training jobs are in service/head_training.py, the heads table's repository in
store/heads.py.

A head serves only while the collections it was trained on hold vectors of the same embedder weights
(their fingerprints are checked at every use).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from simdex.errors import FailedPrecondition, InvalidArgument
from simdex.estimators.linear import project, softmax_proba
from simdex.service import head_training
from simdex.service.collections import Collections
from simdex.service.embedding import Embedders
from simdex.service.validation import check_ids, check_name
from simdex.store import filters
from simdex.store.heads import HeadRecord, HeadStore
from simdex.store.items import Store
from simdex.types import HeadInfo, HeadSpec, Prediction
from simdex.wire import as_matrix

LOG = logging.getLogger(__name__)
CLASSIFIERS = ("logistic", "torch-logistic")
KINDS = (*CLASSIFIERS, "projection")


@dataclass(frozen=True)
class Param:
    """One estimator parameter, as data: its type, its range or choices, and the kinds that take it."""
    type: type
    kinds: tuple[str, ...]
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()


PARAMS: dict[str, Param] = {
    "C": Param(float, CLASSIFIERS, 1e-9, 1e9),
    "max_iter": Param(int, CLASSIFIERS, 1, 100_000),
    "solver": Param(str, ("torch-logistic",), choices=("adam", "lbfgs")),
    "epochs": Param(int, ("torch-logistic",), 1, 100_000),
    "batch_size": Param(int, ("torch-logistic",), 1, 1 << 20),
    "lr": Param(float, ("torch-logistic",), 1e-9, 100.0),
    "device": Param(str, ("torch-logistic",), choices=("auto", "cpu", "cuda")),
    "alpha": Param(float, ("projection",), 0.0, 1e12),
    "seed": Param(int, KINDS, 0, 2**32 - 1),
}


def check_params(kind: str, params: dict) -> dict:
    if not isinstance(params, dict):
        raise InvalidArgument(f"params: expected a JSON object, got {type(params).__name__}")
    out = {}
    for key, value in params.items():
        p = PARAMS.get(key)
        if p is None or kind not in p.kinds:
            known = sorted(k for k, q in PARAMS.items() if kind in q.kinds)
            raise InvalidArgument(f"params: {key!r} is not a parameter of {kind} heads (known: {known})")
        ok = isinstance(value, str) if p.type is str else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (p.type is float or float(value).is_integer()))
        if ok and p.choices and value not in p.choices:
            ok = False
        if ok and p.lo is not None and not p.lo <= value <= p.hi:
            ok = False
        if not ok:
            rng = list(p.choices) if p.choices else f"a {p.type.__name__} in [{p.lo}, {p.hi}]"
            raise InvalidArgument(f"params: {key}={value!r} is invalid; expected {rng}")
        out[key] = p.type(value)
    return out


def check_spec(s: HeadSpec) -> HeadSpec:
    """The one gate for TrainHead: every argument checked, InvalidArgument naming the bad one."""
    check_name(s.collection)
    check_name(s.head, "head")
    if s.kind not in KINDS:
        raise InvalidArgument(f"kind {s.kind!r} is not one of {list(KINDS)}")
    if not (isinstance(s.test_fraction, (int, float)) and 0.0 <= s.test_fraction < 1.0):
        raise InvalidArgument(f"test_fraction must be in [0, 1), got {s.test_fraction!r}")
    filters.parse(s.filter)
    if s.kind == "projection":
        if s.label_field or s.labels is not None:
            raise InvalidArgument("projection heads take no labels: give target_collection, not label_field/labels")
        if not s.target_collection:
            raise InvalidArgument("projection heads need target_collection: the collection whose space to map into")
        check_name(s.target_collection)
        if s.balanced:
            raise InvalidArgument("balanced is for classifier heads")
    else:
        if s.target_collection:
            raise InvalidArgument(f"target_collection is for projection heads, not {s.kind}")
        if bool(s.label_field) == (s.labels is not None):
            raise InvalidArgument("give labels exactly one way: label_field (a metadata field) or labels ({id: label})")
        if s.labels is not None and (not isinstance(s.labels, dict) or not s.labels):
            raise InvalidArgument("labels: expected a non-empty JSON object {id: label}")
        if s.label_field and not filters.FIELD_RE.match(s.label_field):
            raise InvalidArgument(f"label_field {s.label_field!r} is not a valid metadata field name")
    return replace(s, params=check_params(s.kind, s.params))


def check_fresh(rec: HeadRecord, store: Store) -> None:
    """FailedPrecondition when a collection's embedder changed since the head was trained."""
    sides = [(rec.collection, rec.collection_id, rec.embedder_fingerprint)]
    if rec.target_id is not None:
        sides.append((rec.target_collection, rec.target_id, rec.target_fingerprint))
    for name, cid, fp in sides:
        now = store.embedder_fingerprint(cid)
        if now != fp:
            raise FailedPrecondition(
                f"head {rec.name!r} was trained on collection {name!r} with embedder fingerprint {fp!r}, which is now "
                f"{now!r}: its vectors live in another space; retrain the head")


def apply(rec: HeadRecord, X: np.ndarray) -> Prediction:
    """Run head `rec` on (n, dim) float32 vectors: classifiers give labels, (n,) int64 label_indices and (n, k)
    float32 probabilities; projections give (n, out_dim) float32 vectors."""
    if rec.kind == "projection":
        return Prediction([], None, None, project(X, rec.coef, rec.intercept), rec.version)
    P = softmax_proba(X, rec.coef, rec.intercept)
    idx = P.argmax(1).astype(np.int64)
    classes = list(rec.classes)
    return Prediction(classes, [classes[i] for i in idx.tolist()], P, None, rec.version, idx)


def head_info(r: HeadRecord) -> HeadInfo:
    return HeadInfo(r.name, r.collection, r.kind, r.version, list(r.classes), dict(r.metrics), r.created_unix_ms,
                    r.trained_on, r.embedder_fingerprint, r.target_collection, r.dim, r.out_dim, dict(r.params))


class Heads:
    """The heads of every collection: trained from the store's vectors, stored as versions, served from a cache
    of their weights (store/heads.HeadStore)."""

    def __init__(self, collections: Collections, store: Store, embedders: Embedders):
        self.collections, self.store, self.embedders = collections, store, embedders
        self.repo = HeadStore(store)

    def train(self, spec: HeadSpec) -> HeadInfo:
        """Train and store a new version of head `spec.head` (the old version serves until it is committed)."""
        spec = check_spec(spec)
        col = self.collections.get(spec.collection)
        fp = self.store.embedder_fingerprint(col.info.id)
        target = self.collections.get(spec.target_collection) if spec.kind == "projection" else None
        self.repo.check_free(HeadRecord(spec.head, col.name, spec.kind, [], {}, {}, 0, fp, 0, 0,
                                        collection_id=col.info.id, target_id=target.info.id if target else None))
        if target is not None:
            rec = head_training.train_projection(col, target, self.store, spec,
                                                 (fp, self.store.embedder_fingerprint(target.info.id)))
        else:
            rec = head_training.train_classifier(col, self.store, spec, fp)
        rec = self.repo.save(rec)
        LOG.info("head %s v%d (%s on %s) trained: %s", rec.name, rec.version, rec.kind, rec.collection,
                 {k: v for k, v in rec.metrics.items() if k != "confusion"})
        return head_info(rec)

    def get(self, name: str) -> HeadInfo:
        return head_info(self.repo.get(check_name(name, "head")))

    def list(self, collection: str = "") -> list[HeadInfo]:
        """The latest version of every head (of `collection` when given), by name."""
        cid = self.collections.get(collection).info.id if collection else None
        return [head_info(r) for r in self.repo.list(cid)]

    def delete(self, name: str) -> int:
        """Delete every version of head `name`; returns how many."""
        return self.repo.delete(check_name(name, "head"))

    def predict(self, name: str, ids=None, vectors=None, images=(), texts=()) -> Prediction:
        """Run the latest version of head `name` on items of its collection (`ids`), on (n, dim) float32
        `vectors`, or on raw images/texts its collection's embedder embeds."""
        rec = self.repo.get(check_name(name, "head"), with_weights=True)
        if images or texts:
            if ids or vectors is not None:
                raise InvalidArgument("predict: give exactly one of ids, vectors or raw images/texts")
            e = self.embedders.raw(self.collections.get(rec.collection), images, texts)
            if rec.embedder_fingerprint and e.fingerprint != rec.embedder_fingerprint:
                raise FailedPrecondition(f"head {name!r} was trained on vectors of weights "
                                         f"{rec.embedder_fingerprint}; the loaded embedder has {e.fingerprint}")
            check_fresh(rec, self.store)
            return apply(rec, e.vectors)
        ids = list(ids or [])
        if bool(ids) == (vectors is not None):
            raise InvalidArgument("predict: give exactly one of ids or vectors")
        check_fresh(rec, self.store)
        if ids:
            col = self.collections.get(rec.collection)
            X = np.stack([it.vector for it in self.store.get(col.info.id, check_ids(ids, unique=False))])
        else:
            X = as_matrix(vectors, "vectors", rec.dim)
        return apply(rec, X)

    def project_queries(self, head: str, collection: str, queries) -> np.ndarray:
        """Queries (nq, head dim) in the source space of projection head `head` -> (nq, d) float32 in
        `collection`'s space, which must be the head's target."""
        rec = self.repo.get(check_name(head, "head"), with_weights=True)
        if rec.kind != "projection":
            raise InvalidArgument(f"head {head!r} is a {rec.kind} head; searching through a head needs a projection")
        if rec.target_collection != collection:
            raise InvalidArgument(f"head {head!r} maps {rec.collection!r} into {rec.target_collection!r}, "
                                  f"not into {collection!r}")
        check_fresh(rec, self.store)
        return project(as_matrix(queries, "queries", rec.dim), rec.coef, rec.intercept)
