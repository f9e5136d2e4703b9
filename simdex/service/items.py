"""Items of a collection: Upsert (vectors, or raw items its embedder turns into vectors), Delete, Get, Count.

Every request is checked whole before anything is written; a write is one transaction in the store, then applied
to the collection's index (see service/collection.py).
"""
from __future__ import annotations

import numpy as np

from simdex.errors import FailedPrecondition, InvalidArgument
from simdex.service.collection import Collection
from simdex.service.collections import Collections
from simdex.service.embedding import Embedders
from simdex.service.validation import check_fingerprint, check_hashes, check_ids, check_metadata
from simdex.store import filters
from simdex.store.items import Store
from simdex.types import Item
from simdex.wire import as_matrix, canonical_json, content_hash


class Items:
    def __init__(self, collections: Collections, store: Store, embedders: Embedders):
        self.collections, self.store, self.embedders = collections, store, embedders

    def upsert(self, name: str, ids, vectors=None, metadata=(), hashes=(), *, images=(), texts=(),
               fingerprint: str = "") -> tuple[int, int]:
        """Store (n, d) float32 `vectors` (or raw `images`/`texts`, embedded by the collection's embedder) under
        `ids` in one transaction. Returns (n, seq).

        Vectors for an embedder-backed collection must name the `fingerprint` of the weights that made them."""
        col = self.collections.get(name)
        ids = check_ids(ids)
        metas = check_metadata(list(metadata), len(ids))
        hashes = check_hashes(hashes, len(ids))
        fingerprint = check_fingerprint(fingerprint)
        raw = list(images) or list(texts)
        if raw:
            if vectors is not None:
                raise InvalidArgument("give either vectors or raw items (images, texts), not both")
            if len(raw) != len(ids):
                raise InvalidArgument(f"{len(raw)} raw items for {len(ids)} ids")
            e = self.embedders.raw(col, images, texts, ids)
            xb, fingerprint = e.vectors, e.fingerprint
            metas = [{**e.metadata[i], **metas[i]} for i in range(len(ids))]  # the caller's keys win
            keys = [r if isinstance(r, bytes) else r.encode() for r in raw]
        else:
            xb = self._vectors(col, vectors, len(ids), fingerprint)
            keys = [xb[i].tobytes() for i in range(len(ids))]
        if fingerprint and not col.info.embedder:
            raise FailedPrecondition(f"collection {name!r} stores plain vectors; an embedder_fingerprint was sent")
        if raw:  # the embedder's own metadata (DICOM tags) passes the same gate as the caller's
            metas = check_metadata(metas, len(ids))
        if not hashes:
            hashes = [content_hash(keys[i], canonical_json(metas[i])) for i in range(len(ids))]
        res = col.upsert(ids, xb, metas, hashes, fingerprint)
        return len(ids), res.seq

    @staticmethod
    def _vectors(col: Collection, vectors, n: int, fingerprint: str) -> np.ndarray:
        """The upsert's vectors as (n, d) float32, one per id; an embedder-backed collection takes them only
        with the fingerprint of the weights that made them."""
        if vectors is None:
            raise InvalidArgument("upsert: give vectors or raw items (images, texts)")
        xb = as_matrix(vectors, "vectors", col.info.dim)
        if len(xb) != n:
            raise InvalidArgument(f"vectors: {len(xb)} rows for {n} ids")
        if col.info.embedder and not fingerprint:
            raise FailedPrecondition(
                f"collection {col.name!r} is filled by embedder {col.info.embedder!r}: send raw items, or vectors "
                "with the embedder_fingerprint of the weights that made them")
        return xb

    def delete(self, name: str, ids, ignore_missing: bool = False) -> tuple[int, int]:
        """Delete `ids` in one transaction (NotFound, deleting nothing, for an unknown id unless ignore_missing).
        Returns (deleted, seq)."""
        col = self.collections.get(name)
        res = col.delete(check_ids(ids), ignore_missing)
        return len(res.removed_iids), res.seq

    def get(self, name: str, ids, with_vectors: bool = True, ignore_missing: bool = False) -> list[Item]:
        """The items `ids` (repeats allowed) in their order; NotFound for an unknown id unless ignore_missing."""
        col = self.collections.get(name)
        return self.store.get(col.info.id, check_ids(ids, unique=False), with_vectors, ignore_missing)

    def count(self, name: str, filter=None) -> int:  # noqa: A002
        col = self.collections.get(name)
        spec = filters.parse(filter)
        return col.ann.n_live if not spec else self.store.count(col.info.id, spec)
