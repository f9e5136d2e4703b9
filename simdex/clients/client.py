"""The client interface, with its remote (gRPC) and in-process transports below it.

The base class owns argument checking, message splitting and paging; a transport implements the
underscored primitives, each one server call.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from simdex.errors import InvalidArgument, ResourceExhausted
from simdex.types import (ClusterResult, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, Item, Prediction,
                                  SearchResult, UpsertChunk)
from simdex.errors import FailedPrecondition
from simdex.distances import worst
from simdex.wire import as_matrix
from simdex.clients.chunking import _filter_text, _json_texts, _offsets, _raw, _spans

DEFAULT_MAX_MESSAGE_MB = 64
PER_ROW_OVERHEAD = 64  # bytes of framing per item in a message, on top of vector, id and metadata


class ClientBase:
    """`Client(...)` talks gRPC; `Client.local(path)` runs a server in-process. Same methods, same errors."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB * 1024 * 1024
    _infos: dict

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self._infos = {}
        return self

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _budget(self) -> int:
        return int(self.max_message_bytes * 0.75)

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name: str, dim: int, metric: str = "l2", index: str = "Flat",
                          embedder: str = "") -> CollectionInfo:
        info = self._create(name, int(dim), metric, index, embedder)
        self._infos[name] = info
        return info

    def get_collection(self, name: str) -> CollectionInfo:
        info = self._get_collection(name)
        self._infos[name] = info
        return info

    def _cached(self, name: str) -> CollectionInfo:
        """dim and metric never change for a name while it lives: fetched once, not per search."""
        info = self._infos.get(name)
        return info if info is not None else self.get_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        return self._list()

    def delete_collection(self, name: str) -> None:
        self._infos.pop(name, None)
        self._drop(name)

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, collection: str, ids: Sequence[str], vectors=None, metadata: Sequence[dict] | None = None,
               content_hashes: Sequence[str] | None = None, *, images: Sequence[bytes] | None = None,
               texts: Sequence[str] | None = None, embedder_fingerprint: str = "") -> int:
        """Insert or replace items, all in one transaction. Returns the count.

        Give (n, d) float32 `vectors`, or, for a collection with an embedder, raw `images` (encoded PNG/JPEG or
        DICOM bytes) or `texts`, embedded by the server. Vectors you embedded yourself for such a collection name
        the `embedder_fingerprint` of the weights that made them."""
        ids = list(ids)
        metas = _json_texts(metadata, len(ids))
        hashes = list(content_hashes or [])
        raw, kind = _raw(images, texts)
        if raw is not None:
            if vectors is not None:
                raise InvalidArgument("give either vectors or raw items (images, texts), not both")
            if len(raw) != len(ids):
                raise InvalidArgument(f"{kind}: {len(raw)} items for {len(ids)} ids")
            sizes = [len(r) + len(i) + PER_ROW_OVERHEAD + (len(metas[j]) if metas else 0)
                     for j, (r, i) in enumerate(zip(raw, ids))]
            chunks = [UpsertChunk(ids[a:b], None, metas[a:b], hashes[a:b],
                                  raw[a:b] if kind == "images" else [], raw[a:b] if kind == "texts" else [])
                      for a, b in _spans(sizes, self._budget)]
            return self._upsert(collection, chunks)
        x = as_matrix(vectors, "vectors")
        if len(x) != len(ids):
            raise InvalidArgument(f"vectors: {len(x)} rows for {len(ids)} ids")
        row = x.shape[1] * 4 + PER_ROW_OVERHEAD + (max(map(len, ids)) if ids else 0)
        row += max(map(len, metas)) if metas else 0
        per_msg = max(1, self._budget // row)
        chunks = [
            UpsertChunk(ids[i:i + per_msg], x[i:i + per_msg], metas[i:i + per_msg], hashes[i:i + per_msg],
                        fingerprint=embedder_fingerprint)
            for i in range(0, len(ids), per_msg)
        ] or [UpsertChunk(ids, x, metas, hashes, fingerprint=embedder_fingerprint)]
        return self._upsert(collection, chunks)

    # ---- embedders and the translator ---------------------------------------------------------------------
    def list_embedders(self) -> list[EmbedderInfo]:
        """The server's registered embedders: name, modality, dim, whether its weights are present."""
        return self._list_embedders()

    def embed(self, embedder: str, images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None
              ) -> np.ndarray:
        """(n, dim) float32 vectors of `images` (encoded image or DICOM bytes; a multi-frame DICOM gives its
        middle frame) or `texts`, made by the server's embedder `embedder`."""
        return self.embed_items(embedder, images, texts).vectors

    def embed_items(self, embedder: str, images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None,
                    all_frames: bool = False) -> Embedding:
        """As embed, with the weights' fingerprint, the DICOM tags of each input and, with `all_frames`, one row
        per frame of a multi-frame DICOM (`item_index`, `frame_index` say which)."""
        raw, kind = _raw(images, texts)
        if raw is None:
            raise InvalidArgument("embed: give images or texts")
        parts = []
        for a, b in _spans([len(r) + PER_ROW_OVERHEAD for r in raw], self._budget):
            call = lambda rows: [self._embed(embedder, rows if kind == "images" else [],  # noqa: E731
                                             rows if kind == "texts" else [], all_frames)]
            parts.extend((a + off, e) for off, e in _offsets(self._shrinking(call, raw[a:b])))
        return Embedding(np.concatenate([e.vectors for _, e in parts]), parts[0][1].fingerprint,
                         np.concatenate([e.item_index + a for a, e in parts]),
                         np.concatenate([e.frame_index for _, e in parts]),
                         [m for _, e in parts for m in e.metadata])

    def translate(self, texts: Sequence[str], model: str = "", beam: int = 1, max_len: int = 0) -> list[str]:
        """Translate `texts` with the server's seq2seq model `model` (default: the shipped French->English
        question model), greedy or with a beam of `beam`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InvalidArgument("translate: give at least one text")
        return [t for t, _ in self._translate(model, texts, int(beam), int(max_len))]

    def delete(self, collection: str, ids: Sequence[str], ignore_missing: bool = False) -> int:
        """Delete items by id, all or nothing. Returns how many were deleted."""
        return self._delete(collection, list(ids), ignore_missing)

    def get(self, collection: str, ids: Sequence[str], with_vectors: bool = True,
            ignore_missing: bool = False) -> list[Item]:
        """Items by id, in the order asked. An unknown id is NotFound, unless ignore_missing (then skipped)."""
        ids = list(ids)
        if not ids:
            raise InvalidArgument("ids: empty batch; give at least one id")
        per = max(1, self._budget // (PER_ROW_OVERHEAD + 4096 + 4 * self._dim(collection)))
        out: list[Item] = []
        for i in range(0, len(ids), per):
            out.extend(self._shrinking(lambda part: self._get(collection, part, with_vectors, ignore_missing),
                                       ids[i:i + per]))
        return out

    def count(self, collection: str, filter: dict | str | None = None) -> int:  # noqa: A002
        return self._count(collection, _filter_text(filter))

    def search(self, collection: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter: dict | str | None = None, params: dict | None = None,  # noqa: A002
               include_metadata: bool = False, page_size: int = 0, head: str | None = None,
               images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None) -> SearchResult:
        """Nearest neighbours of each row of (nq, d) float32 `queries`.

        k-NN by default; with `radius`, every hit within it (l2: squared distance < radius; ip/cosine:
        similarity > radius), fetched page by page. `filter` restricts hits by metadata
        ({"modality": "CT"}, {"age": {"$gte": 40}}, {"site": {"$in": [...]}}, {"f": {"$ne": x}}).
        `params`: {"nprobe": int, "efSearch": int, "k_factor": int} for IVF / HNSW / RFlat kinds.
        `head`: a projection head whose target is `collection`; `queries` are then (nq, head dim) vectors of the
        head's source collection, projected on the server before the search.
        `images` / `texts`: raw queries for a collection with an embedder, instead of `queries`.
        """
        info = self._cached(collection)
        raw, kind = _raw(images, texts)
        if raw is not None:
            if queries is not None:
                raise InvalidArgument("give either queries (vectors) or raw images/texts, not both")
            if radius is not None:  # pages re-send the query: embed once, then search with the vectors
                queries = self.embed(info.embedder, **{kind: raw})
            else:
                return self._raw_search(collection, info, raw, kind, k, filter, include_metadata)
        if queries is None:
            raise InvalidArgument("search: give queries (vectors) or raw images/texts")
        xq = np.asarray(queries)
        xq = as_matrix(xq[None, :] if xq.ndim == 1 else xq, "queries")  # the server checks the dimension
        p = dict(params or {})
        unknown = set(p) - {"nprobe", "efSearch", "ef_search", "k_factor"}
        if unknown:
            raise InvalidArgument(f"params: unknown keys {sorted(unknown)} (nprobe, efSearch, k_factor)")
        sp = (int(p.get("nprobe", 0)), int(p.get("efSearch", p.get("ef_search", 0))), int(p.get("k_factor", 0)))
        ftext = _filter_text(filter)
        if radius is not None:
            return self._range(collection, xq, float(radius), ftext, sp, include_metadata, page_size, head or "")
        per = max(1, min(self._budget // (4 * xq.shape[1] + PER_ROW_OVERHEAD),
                         self._budget // max(1, k * (PER_ROW_OVERHEAD + (4096 if include_metadata else 0)))))
        ids: list[list[str]] = []
        metas: list[list[dict]] = []
        D = np.full((len(xq), k), worst(info.metric), dtype=np.float32)
        row = 0
        for i in range(0, len(xq), per):
            part = self._shrinking(
                lambda q: self._search(collection, q, k, None, ftext, sp, include_metadata, 0, "", head or ""),
                xq[i:i + per])
            for hit_ids, dist, meta, _ in part:
                ids.append(hit_ids)
                D[row, : len(dist)] = dist
                metas.append(meta)
                row += 1
        return SearchResult(ids, D, metas if include_metadata else None)

    def _raw_search(self, collection, info, raw, kind, k, filter, include_metadata) -> SearchResult:  # noqa: A002
        ids, metas, blocks = [], [], []
        for a, b in _spans([len(r) + PER_ROW_OVERHEAD for r in raw], self._budget):
            part = self._shrinking(lambda rows: self._search(
                collection, None, k, None, _filter_text(filter), (0, 0, 0), include_metadata, 0, "", "",
                **{kind: list(rows)}), raw[a:b])
            for hit_ids, dist, meta, _ in part:
                ids.append(hit_ids)
                row = np.full(k, worst(info.metric), np.float32)
                row[:len(dist)] = dist
                blocks.append(row)
                metas.append(meta)
        return SearchResult(ids, np.stack(blocks), metas if include_metadata else None)

    def _range(self, collection, xq, radius, ftext, sp, include_metadata, page_size, head="") -> SearchResult:
        ids, dists, metas = [], [], []
        for q in xq:
            token, qi, qd, qm = "", [], [], []
            while True:
                (hit_ids, dist, meta, token), = self._search(
                    collection, q[None], 0, radius, ftext, sp, include_metadata, page_size, token, head)
                qi.extend(hit_ids)
                qd.append(dist)
                qm.extend(meta)
                if not token:
                    break
            ids.append(qi)
            dists.append(np.concatenate(qd).astype(np.float32))
            metas.append(qm)
        return SearchResult(ids, dists, metas if include_metadata else None)

    def cluster(self, collection: str, bandwidth: float | None = None, *, filter: dict | str | None = None,  # noqa: A002
                kernel: str = "flat", bin_seeding: bool = False, min_bin_freq: int = 1, cluster_all: bool = True,
                max_iter: int = 300, max_seeds: int | None = 1000, representatives: int = 5,
                page_size: int = 0) -> ClusterResult:
        """Mean shift over the collection's vectors (or those matching `filter`), on the server.

        Parameters as scikit-learn's MeanShift (`bandwidth=None` estimates it; kernel "flat" takes it as the
        radius). `max_seeds`: seeds are a deterministic sample of at most this many points (None: every point).
        Member labels are fetched page by page."""
        spec = {"filter": _filter_text(filter), "bandwidth": bandwidth, "kernel": kernel, "bin_seeding": bin_seeding,
                "min_bin_freq": min_bin_freq, "cluster_all": cluster_all, "max_iter": max_iter,
                "max_seeds": max_seeds, "representatives": representatives}
        token, ids, labels = "", [], []
        while True:
            clusters, bw, n_iter, page_ids, page_labels, token = self._cluster(collection, spec, page_size, token)
            ids.extend(page_ids)
            labels.extend(page_labels)
            if not token:
                return ClusterResult(clusters, ids, np.asarray(labels, dtype=np.int32), bw, n_iter)

    # ---- heads -------------------------------------------------------------------------------------------
    def train_head(self, collection: str, head: str, *, kind: str = "logistic", label_field: str | None = None,
                   labels: dict | None = None, filter: dict | str | None = None,  # noqa: A002
                   test_fraction: float = 0.2, balanced: bool = False, target_collection: str | None = None,
                   **params) -> HeadInfo:
        """Train (or retrain: a new version) head `head` on the stored vectors of `collection`; the report.

        Classifiers (kind "logistic": scikit-learn LogisticRegression, C=1.0; "torch-logistic": a torch linear
        layer in mini-batches) learn labels from metadata field `label_field` or from `labels` {id: label}.
        Projection heads (kind "projection") map `collection`'s space into `target_collection`'s by ridge
        regression over the ids both hold. `test_fraction` of the items is held out (stratified, seeded) for
        `report.metrics`. `params`: estimator parameters (C, max_iter, solver, epochs, batch_size, lr, device,
        alpha, seed)."""
        plain = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731 - numpy scalars -> JSON values
        if labels is not None:
            labels = {str(k): plain(v) for k, v in dict(labels).items()}
        params = {k: plain(v) for k, v in params.items()}
        spec = {"collection": collection, "head": head, "kind": kind, "label_field": label_field or "",
                "labels": labels, "filter": _filter_text(filter), "test_fraction": float(test_fraction),
                "balanced": bool(balanced), "target_collection": target_collection or "", "params": params}
        return self._train_head(spec)

    def get_head(self, name: str) -> HeadInfo:
        """The latest version of head `name`: kind, collection, classes, metrics, trained_on, fingerprint."""
        return self._get_head(name)

    def list_heads(self, collection: str | None = None) -> list[HeadInfo]:
        return self._list_heads(collection or "")

    def delete_head(self, name: str) -> int:
        """Delete every version of head `name`. Returns how many versions were deleted."""
        return self._delete_head(name)

    def predict(self, head: str, *, ids: Sequence[str] | None = None, vectors=None, images=None,
                texts=None) -> Prediction:
        """Run head `head` on items of its collection (`ids`) or on (n, dim) float32 `vectors` of its space.

        Classifiers: `p.labels` (one per input, as stored: int stays int), `p.probabilities` (n, k) float32 in
        `p.classes` order. Projection heads: `p.vectors` (n, out_dim) float32 in the target's space."""
        if images is not None or texts is not None:  # the server says what raw inputs need
            return self._predict(head, [], None, list(images or []), list(texts or []))
        if (ids is None) == (vectors is None):
            raise InvalidArgument("predict: give exactly one of ids or vectors")
        info = self.get_head(head)
        if ids is not None:
            rows: Sequence = list(ids)
            if not rows:
                raise InvalidArgument("ids: empty batch; give at least one id")
            per = self._budget // (4 * (info.dim + info.out_dim) + PER_ROW_OVERHEAD + max(map(len, rows)))
            call = lambda part: [self._predict(head, part, None, [], [])]  # noqa: E731
        else:
            rows = as_matrix(vectors, "vectors", info.dim)
            per = self._budget // (4 * (info.dim + info.out_dim) + PER_ROW_OVERHEAD)
            call = lambda part: [self._predict(head, [], part, [], [])]  # noqa: E731
        per = max(1, per)
        parts = [p for i in range(0, len(rows), per) for p in self._shrinking(call, rows[i:i + per])]
        if len({p.version for p in parts}) > 1:
            raise FailedPrecondition(f"head {head!r} was retrained during this call; predict again")
        first = parts[0]
        if first.vectors is not None:
            return Prediction(first.classes, None, None, np.concatenate([p.vectors for p in parts]), first.version)
        return Prediction(first.classes, [lab for p in parts for lab in p.labels],
                          np.concatenate([p.probabilities for p in parts]), None, first.version)

    def _shrinking(self, call, rows) -> list:
        """Call with `rows`; when the answer is over the message limit, halve and retry."""
        try:
            return list(call(rows))
        except ResourceExhausted:
            if len(rows) == 1:
                raise
            half = len(rows) // 2
            return self._shrinking(call, rows[:half]) + self._shrinking(call, rows[half:])

    def _dim(self, collection: str) -> int:
        return self._cached(collection).dim

    # ---- transport primitives ----------------------------------------------------------------------------
    def _create(self, name, dim, metric, index, embedder) -> CollectionInfo: raise NotImplementedError
    def _get_collection(self, name) -> CollectionInfo: raise NotImplementedError
    def _list(self) -> list[CollectionInfo]: raise NotImplementedError
    def _drop(self, name) -> None: raise NotImplementedError
    def _upsert(self, name, chunks: Iterable) -> int: raise NotImplementedError
    def _delete(self, name, ids, ignore_missing) -> int: raise NotImplementedError
    def _get(self, name, ids, with_vectors, ignore_missing) -> list[Item]: raise NotImplementedError
    def _count(self, name, filter_text) -> int: raise NotImplementedError
    def _cluster(self, name, spec: dict, page_size: int, token: str) -> tuple:
        """-> (clusters, bandwidth, n_iter, page ids, page labels, next token)."""
        raise NotImplementedError

    def _train_head(self, spec: dict) -> HeadInfo: raise NotImplementedError
    def _get_head(self, name) -> HeadInfo: raise NotImplementedError
    def _list_heads(self, collection) -> list[HeadInfo]: raise NotImplementedError
    def _delete_head(self, name) -> int: raise NotImplementedError
    def _predict(self, head, ids, x, images, texts) -> Prediction: raise NotImplementedError
    def _list_embedders(self) -> list[EmbedderInfo]: raise NotImplementedError
    def _embed(self, embedder, images, texts, all_frames) -> Embedding: raise NotImplementedError
    def _translate(self, model, texts, beam, max_len) -> list[tuple[str, float]]: raise NotImplementedError

    def _search(self, name, xq, k, radius, filter_text, params, include_metadata, page_size, token,
                head="") -> list:
        """-> one (ids, (m,) float32 distances, metadata list, next_page_token) per query."""
        raise NotImplementedError
