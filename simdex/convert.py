"""The one proto <-> domain converter: `simdex.proto` messages <-> `simdex.types` values, used by the servicer
(requests in, results out) and by the remote client transport (requests out, results in).

Absent or zero proto fields take their `simdex.defaults` values here and nowhere else on the wire path. Vectors
travel as packed little-endian float32 (`simdex.wire`); JSON values (metadata, classes, metrics) as text.
Only numpy, json and the light shared modules: the SDK imports this without the server extra.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any, Iterable, Sequence

import numpy as np

from simdex import defaults
from simdex.errors import Internal, InvalidArgument, SimdexError, from_code, not_a_json_object
from simdex.proto import simdex_pb2 as pb
from simdex.types import (
    Cluster, ClusterResult, ClusterSpec, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, HeadSpec, Item,
    Prediction, SearchParams, UpsertChunk,
)
from simdex.wire import pack, to_bytes, unpack, unpack_floats

# Trailing metadata of an error status: the index of the input item at fault (SimdexError.item).
ITEM_KEY = "simdex-item"
# Trailing metadata of a SearchStream refused because all the server's search streams are open.
STREAMS_FULL = "simdex-streams"


# ---- errors --------------------------------------------------------------------------------------------------
def error_metadata(exc: SimdexError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata an error status carries besides its code and message."""
    return () if exc.item is None else ((ITEM_KEY, str(int(exc.item))),)


def error_from_status(code: str, message: str, trailing: Iterable[tuple[str, Any]] | None = ()) -> SimdexError:
    """A gRPC status (code name, details, trailing metadata) -> the SimdexError it stands for, `item` restored."""
    item = None
    for key, value in trailing or ():
        if key == ITEM_KEY:
            try:
                item = int(value)
            except (TypeError, ValueError):  # not one of ours: the error stays whole-request
                item = None
    return from_code(code, message, item)


# ---- JSON text -----------------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def json_object(text: str, what: str) -> dict:
    """JSON object text from the wire -> dict, or InvalidArgument naming `what`."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise not_a_json_object(what, text, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise not_a_json_object(what, text, f"a JSON {type(obj).__name__}")
    return obj


# ---- matrices ------------------------------------------------------------------------------------------------
def matrix_to_pb(x: np.ndarray) -> pb.Matrix:
    """(n, d) float32 -> Matrix (packed little-endian float32 and its shape)."""
    data, shape = pack(x)
    return pb.Matrix(data=data, shape=shape)


def matrix_from_pb(m: pb.Matrix, name: str = "vectors") -> np.ndarray:
    """Matrix -> (n, d) float32, a read-only view of the message's bytes; InvalidArgument naming `name` when its
    shape and byte count disagree."""
    return unpack(m.data, m.shape, name)


# ---- collections, embedders, heads ---------------------------------------------------------------------------
def collection_to_pb(c: CollectionInfo) -> pb.Collection:
    return pb.Collection(name=c.name, dim=c.dim, metric=c.metric, index=c.index, count=c.count, trained=c.trained,
                         seq=c.seq, created_unix_ms=c.created_unix_ms, embedder=c.embedder,
                         embedder_fingerprint=c.embedder_fingerprint, unavailable=c.unavailable,
                         search_backend=c.search_backend)


def collection_from_pb(c: pb.Collection) -> CollectionInfo:
    return CollectionInfo(c.name, c.dim, c.metric, c.index, c.count, c.trained, c.seq, c.created_unix_ms,
                          c.embedder, c.embedder_fingerprint, c.unavailable, c.search_backend)


def embedder_to_pb(e: EmbedderInfo) -> pb.Embedder:
    return pb.Embedder(name=e.name, modality=e.modality, dim=e.dim, description=e.description,
                       weights_present=e.weights_present, weights_file=e.weights_file, fingerprint=e.fingerprint)


def embedder_from_pb(e: pb.Embedder) -> EmbedderInfo:
    return EmbedderInfo(e.name, e.modality, e.dim, e.description, e.weights_present, e.weights_file, e.fingerprint)


def head_to_pb(h: HeadInfo) -> pb.Head:
    return pb.Head(name=h.name, collection=h.collection, kind=h.kind, version=h.version,
                   classes=[_text(c) for c in h.classes], metrics=json.dumps(h.metrics),
                   created_unix_ms=h.created_unix_ms, trained_on=h.trained_on,
                   embedder_fingerprint=h.embedder_fingerprint, target_collection=h.target_collection, dim=h.dim,
                   out_dim=h.out_dim, params=_text(h.params))


def head_from_pb(h: pb.Head) -> HeadInfo:
    return HeadInfo(h.name, h.collection, h.kind, h.version, [json.loads(c) for c in h.classes],
                    json.loads(h.metrics), h.created_unix_ms, h.trained_on, h.embedder_fingerprint,
                    h.target_collection, h.dim, h.out_dim, json.loads(h.params or "{}"))


def head_spec_to_pb(s: HeadSpec) -> pb.TrainHeadRequest:
    return pb.TrainHeadRequest(
        collection=s.collection, head=s.head, kind=s.kind, label_field=s.label_field,
        labels=_text(s.labels) if s.labels is not None else "", filter=s.filter, test_fraction=s.test_fraction,
        balanced=s.balanced, target_collection=s.target_collection, params=json.dumps(s.params) if s.params else "")


def head_spec_from_pb(r: pb.TrainHeadRequest) -> HeadSpec:
    """TrainHeadRequest -> HeadSpec; labels and params parsed (InvalidArgument when they are not JSON objects)."""
    return HeadSpec(
        collection=r.collection, head=r.head, kind=r.kind or defaults.HEAD_KIND, label_field=r.label_field,
        labels=json_object(r.labels, "labels") if r.labels else None, filter=r.filter,
        # float32 on the wire: 0.2 arrives as 0.200000003; rounding gives back what the caller wrote
        test_fraction=round(r.test_fraction, 6) if r.HasField("test_fraction") else defaults.HEAD_TEST_FRACTION,
        balanced=r.balanced, target_collection=r.target_collection,
        params=json_object(r.params, "params") if r.params else {})


# ---- items ---------------------------------------------------------------------------------------------------
def upsert_to_pb(collection: str, c: UpsertChunk) -> pb.UpsertRequest:
    return pb.UpsertRequest(collection=collection, ids=c.ids,
                            vectors=matrix_to_pb(c.vectors) if c.vectors is not None else None,
                            metadata=c.metadata, content_hashes=c.content_hashes, images=c.images, texts=c.texts,
                            embedder_fingerprint=c.fingerprint)


def upsert_from_pb(msg: pb.UpsertRequest, i: int) -> UpsertChunk:
    """Upsert message `i` of a stream -> UpsertChunk, its counts checked; absent metadata and content hashes come
    as "" per id."""
    n, where = len(msg.ids), f"upsert message {i}"
    if msg.metadata and len(msg.metadata) != n:
        raise InvalidArgument(f"{where}: {len(msg.metadata)} metadata for {n} ids")
    if msg.content_hashes and len(msg.content_hashes) != n:
        raise InvalidArgument(f"{where}: {len(msg.content_hashes)} content_hashes for {n} ids")
    kinds = [k for k, on in (("vectors", msg.HasField("vectors")), ("images", bool(msg.images)),
                             ("texts", bool(msg.texts))) if on]
    if len(kinds) != 1:
        raise InvalidArgument(f"{where}: give exactly one of vectors, images or texts (got {kinds or 'none'})")
    vectors = None
    if msg.HasField("vectors"):
        vectors = matrix_from_pb(msg.vectors, f"{where} vectors")
        if len(vectors) != n:
            raise InvalidArgument(f"{where}: {len(vectors)} vectors for {n} ids")
    elif len(msg.images or msg.texts) != n:
        raise InvalidArgument(f"{where}: {len(msg.images or msg.texts)} {kinds[0]} for {n} ids")
    return UpsertChunk(list(msg.ids), vectors, list(msg.metadata) or [""] * n, list(msg.content_hashes) or [""] * n,
                       list(msg.images), list(msg.texts), msg.embedder_fingerprint)


def items_to_pb(items: Sequence[Item], with_vectors: bool) -> pb.GetResponse:
    resp = pb.GetResponse(ids=[it.id for it in items], metadata=[_text(it.metadata) for it in items],
                          content_hashes=[it.content_hash for it in items])
    if with_vectors and items:
        resp.vectors.CopyFrom(matrix_to_pb(np.stack([it.vector for it in items])))
    return resp


def items_from_pb(r: pb.GetResponse, with_vectors: bool) -> list[Item]:
    """GetResponse -> Items, each vector a writable (d,) float32 copy (None without vectors)."""
    X = matrix_from_pb(r.vectors) if with_vectors and r.ids else [None] * len(r.ids)
    return [Item(i, None if v is None else v.copy(), json.loads(m), h)
            for i, v, m, h in zip(r.ids, X, r.metadata, r.content_hashes)]


# ---- search --------------------------------------------------------------------------------------------------
@dataclass
class QueryHits:
    """One query's answer off the wire: ids best first, their (m,) float32 distances, "" or the next page."""
    ids: list[str]
    distances: np.ndarray
    next_page_token: str = ""


def search_params_to_pb(p: SearchParams) -> pb.SearchParams:
    return pb.SearchParams(nprobe=p.nprobe, ef_search=p.ef_search, k_factor=p.k_factor)


_DEFAULT_PARAMS = SearchParams()  # the usual request's: shared, so the index finds its cached FAISS parameters fast


def search_params_from_pb(p: pb.SearchParams) -> SearchParams:
    nprobe, ef_search, k_factor = p.nprobe, p.ef_search, p.k_factor
    return SearchParams(nprobe, ef_search, k_factor) if nprobe or ef_search or k_factor else _DEFAULT_PARAMS


def search_request_to_pb(name: str, queries: np.ndarray | None, k: int, *, radius: float | None = None,
                         filter: str = "", params: SearchParams = SearchParams(),  # noqa: A002
                         include_metadata: bool = False, page_size: int = 0, page_token: str = "", head: str = "",
                         images: Sequence[bytes] = (), texts: Sequence[str] = ()) -> pb.SearchRequest:
    """The arguments of `Simdex.search` -> SearchRequest; `queries` (nq, d) float32 or None with raw inputs.
    A k-NN search without metadata asks for the packed answer."""
    req = pb.SearchRequest(collection=name, queries=matrix_to_pb(queries) if queries is not None else None, k=k,
                           filter=filter, params=search_params_to_pb(params), include_metadata=include_metadata,
                           page_size=page_size, page_token=page_token, head=head, images=images, texts=texts,
                           packed=radius is None and not include_metadata)
    if radius is not None:
        req.radius = radius
    return req


def search_request_from_pb(r: pb.SearchRequest) -> dict[str, Any]:
    """SearchRequest -> the keyword arguments of `Simdex.search` (queries a read-only (nq, d) float32 view)."""
    images, texts = r.images, r.texts
    raw = bool(images or texts)
    queries = None if raw and not r.HasField("queries") else matrix_from_pb(r.queries, "queries")
    return dict(name=r.collection, queries=queries, k=r.k, radius=r.radius if r.HasField("radius") else None,
                filter=r.filter, params=search_params_from_pb(r.params), page_size=r.page_size,
                page_token=r.page_token, include_metadata=r.include_metadata, head=r.head,
                images=list(images) if raw else [], texts=list(texts) if raw else [])


def metadata_texts(metas: Sequence[Sequence[dict]] | None) -> list[list[str]] | None:
    """Each hit's metadata as JSON text, every distinct dict (hits of one item share one) serialised once."""
    if metas is None:
        return None
    memo: dict[int, str] = {}
    return [[memo.get(id(m)) or memo.setdefault(id(m), _text(m)) for m in row] for row in metas]


def search_response_min_bytes(hits: Sequence, texts: Sequence[Sequence[str]] | None) -> int:
    """A lower bound of the SearchResponse's size, computed without building it: every id, distance and
    metadata text with its tag and length byte (characters counted, which UTF-8 only makes more)."""
    size = 0
    for i, h in enumerate(hits):
        size += 2 + 6 * len(h.ids) + sum(map(len, h.ids)) + len(h.next_page_token)
        if texts is not None:
            size += 2 * len(texts[i]) + sum(map(len, texts[i]))
    return size


def search_response_to_pb(hits: Sequence, texts: Sequence[Sequence[str]] | None) -> pb.SearchResponse:
    """One QueryHits per query from hits with `ids`, `distances` (m,) float32 and `next_page_token`; `texts`
    the hits' metadata as JSON text (metadata_texts), or None."""
    resp = pb.SearchResponse()
    for i, h in enumerate(hits):
        qh = resp.results.add(ids=h.ids, distances=to_bytes(h.distances), next_page_token=h.next_page_token)
        if texts is not None:
            qh.metadata.extend(texts[i])
    return resp


def packs(request: pb.SearchRequest) -> bool:
    """Whether the answer to `request` is packed: asked for, k-NN, no metadata."""
    return request.packed and not request.HasField("radius") and not request.include_metadata


def packed_response_to_pb(hits: Sequence) -> pb.SearchResponse:
    """Hits (with `ids` and (m,) `distances`) of every query -> one PackedHits: ids joined by NUL."""
    dist = np.concatenate([h.distances for h in hits]) if hits else np.zeros(0, np.float32)
    return pb.SearchResponse(packed=pb.PackedHits(ids="\0".join(chain.from_iterable(h.ids for h in hits)),
                                                  distances=to_bytes(dist), counts=[len(h.ids) for h in hits]))


class PackedAnswer(Sequence):
    """A packed k-NN answer as a sequence of QueryHits (made when one is read): `ids` and `distances` of every hit,
    query after query, and the `bounds` of each query's hits in them. Slices are PackedAnswers too."""

    def __init__(self, ids: list[str], distances: np.ndarray, bounds: list[int]):
        self.ids, self.distances, self.bounds = ids, distances, bounds

    @classmethod
    def from_pb(cls, p: pb.PackedHits) -> PackedAnswer:
        ids = p.ids.split("\0") if p.ids else []
        distances = unpack_floats(p.distances)
        bounds = list(accumulate(p.counts, initial=0))
        if not len(ids) == len(distances) == bounds[-1]:
            raise Internal(f"malformed packed search answer: {len(ids)} ids, {len(distances)} distances, "
                           f"counts summing to {bounds[-1]}")
        return cls(ids, distances, bounds)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a PackedAnswer slices with step 1 only")
            b = max(a, b)
            lo, hi = self.bounds[a], self.bounds[b]
            return PackedAnswer(self.ids[lo:hi], self.distances[lo:hi], [x - lo for x in self.bounds[a:b + 1]])
        i = range(len(self))[i]  # negative indices too; IndexError past the end
        lo, hi = self.bounds[i], self.bounds[i + 1]
        return QueryHits(self.ids[lo:hi], self.distances[lo:hi])

    def full(self, k: int) -> bool:
        """Whether every query has exactly k hits (then row q's are ids[q*k:(q+1)*k])."""
        b = self.bounds
        return len(self.ids) == k * len(self) and all(b[i + 1] - b[i] == k for i in range(len(self)))


def search_response_from_pb(r: pb.SearchResponse, include_metadata: bool
                            ) -> tuple[Sequence[QueryHits], list[list[dict]] | None]:
    """SearchResponse -> (one QueryHits per query, per-hit metadata dicts or None when not asked)."""
    if r.HasField("packed"):
        return PackedAnswer.from_pb(r.packed), None
    hits = [QueryHits(list(h.ids), unpack_floats(h.distances), h.next_page_token) for h in r.results]
    metas = [[json.loads(m) for m in h.metadata] for h in r.results] if include_metadata else None
    return hits, metas


# ---- clustering ----------------------------------------------------------------------------------------------
def cluster_request_to_pb(name: str, s: ClusterSpec, page_size: int = 0, page_token: str = "") -> pb.ClusterRequest:
    req = pb.ClusterRequest(collection=name, filter=s.filter, kernel=s.kernel, bin_seeding=s.bin_seeding,
                            min_bin_freq=s.min_bin_freq, cluster_all=s.cluster_all, max_iter=s.max_iter,
                            max_seeds=s.max_seeds or 0, representatives=s.representatives, page_size=page_size,
                            page_token=page_token)
    if s.bandwidth is not None:
        req.bandwidth = s.bandwidth
    return req


def cluster_request_from_pb(r: pb.ClusterRequest) -> tuple[ClusterSpec, int, str]:
    """ClusterRequest -> (ClusterSpec, page_size, page_token); absent or 0 fields take the defaults."""
    spec = ClusterSpec(
        filter=r.filter, bandwidth=r.bandwidth if r.HasField("bandwidth") else None,
        kernel=r.kernel or defaults.CLUSTER_KERNEL, bin_seeding=r.bin_seeding,
        min_bin_freq=r.min_bin_freq or defaults.CLUSTER_MIN_BIN_FREQ,
        cluster_all=r.cluster_all if r.HasField("cluster_all") else True,
        max_iter=r.max_iter or defaults.CLUSTER_MAX_ITER,
        # max_seeds: absent takes the default sample; 0 seeds from every point (None)
        max_seeds=(r.max_seeds or None) if r.HasField("max_seeds") else defaults.CLUSTER_MAX_SEEDS,
        representatives=r.representatives or defaults.CLUSTER_REPRESENTATIVES)
    return spec, r.page_size, r.page_token


def cluster_response_to_pb(result: ClusterResult, next_page_token: str) -> pb.ClusterResponse:
    """One page: every cluster, this page's members (result.ids / labels) and the token of the next page."""
    resp = pb.ClusterResponse(bandwidth=result.bandwidth, n_iter=result.n_iter, n_points=result.n_points,
                              member_ids=result.ids, member_labels=np.asarray(result.labels).tolist(),
                              next_page_token=next_page_token)
    for c in result.clusters:
        resp.clusters.add(label=c.label, size=c.size, center=to_bytes(c.center), representatives=c.representatives)
    return resp


def cluster_response_from_pb(r: pb.ClusterResponse) -> tuple[ClusterResult, str]:
    """ClusterResponse -> (ClusterResult of this page's members, next page token or "")."""
    clusters = [Cluster(c.label, c.size, unpack_floats(c.center).copy(), list(c.representatives))
                for c in r.clusters]
    return ClusterResult(clusters, list(r.member_ids), np.asarray(r.member_labels, dtype=np.int32), r.bandwidth,
                         r.n_iter, r.n_points), r.next_page_token


# ---- heads' predictions and embeddings -----------------------------------------------------------------------
def predict_request_to_pb(head: str, ids: Sequence[str], vectors: np.ndarray | None, images: Sequence[bytes],
                          texts: Sequence[str]) -> pb.PredictRequest:
    req = pb.PredictRequest(head=head, ids=ids, images=images, texts=texts)
    if vectors is not None:
        req.vectors.CopyFrom(matrix_to_pb(vectors))
    return req


def predict_request_from_pb(r: pb.PredictRequest) -> tuple[str, list[str], np.ndarray | None, list, list]:
    """PredictRequest -> (head, ids, (n, d) float32 vectors or None, images, texts)."""
    x = matrix_from_pb(r.vectors, "vectors") if r.HasField("vectors") else None
    return r.head, list(r.ids), x, list(r.images), list(r.texts)


def prediction_to_pb(p: Prediction) -> pb.PredictResponse:
    resp = pb.PredictResponse(version=p.version, classes=[_text(c) for c in p.classes])
    if p.probabilities is not None:
        resp.label_indices.extend(np.asarray(p.label_indices).tolist())
        resp.probabilities.CopyFrom(matrix_to_pb(p.probabilities))
    if p.vectors is not None:
        resp.projections.CopyFrom(matrix_to_pb(p.vectors))
    return resp


def prediction_from_pb(r: pb.PredictResponse) -> Prediction:
    """PredictResponse -> Prediction: projections as (n, out_dim) float32 vectors, or classifier labels (values),
    (n, len(classes)) float32 probabilities and (n,) int64 label_indices."""
    if r.HasField("projections"):
        return Prediction([], None, None, matrix_from_pb(r.projections, "projections").copy(), r.version)
    classes = [json.loads(c) for c in r.classes]
    probabilities = matrix_from_pb(r.probabilities, "probabilities").copy()
    return Prediction(classes, [classes[i] for i in r.label_indices], probabilities, None, r.version,
                      np.asarray(r.label_indices, dtype=np.int64))


def embedding_to_pb(e: Embedding) -> pb.EmbedResponse:
    resp = pb.EmbedResponse(fingerprint=e.fingerprint, item_index=np.asarray(e.item_index).tolist(),
                            frame_index=np.asarray(e.frame_index).tolist(), metadata=[_text(m) for m in e.metadata])
    resp.vectors.CopyFrom(matrix_to_pb(e.vectors))
    return resp


def embedding_from_pb(r: pb.EmbedResponse) -> Embedding:
    return Embedding(matrix_from_pb(r.vectors, "vectors").copy(), r.fingerprint, np.asarray(r.item_index, np.int64),
                     np.asarray(r.frame_index, np.int64), [json.loads(m) for m in r.metadata])
