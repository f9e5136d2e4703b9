"""`Client`, the simdex SDK: one class over two transports (simdex.clients.transport).

`Client(target)` talks gRPC to a server, or to several replicas (a list of "host:port" or a gRPC URI such as
"dns:///name:50051": round-robin with retries of the calls that store nothing, simdex.clients.targets);
`Client.local(path)` runs the service in this process. The Client owns
argument checking, splitting requests and answers to fit the message limit, and paging; a transport makes each
call. Both transports raise the same simdex.errors classes, with `err.item` naming the bad input of a batch.
The methods are written once, in `ClientBase`, as plans of transport calls (simdex.clients.plans): `Client` makes
the calls and blocks, `AsyncClient` (simdex.clients.async_client) awaits them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from simdex import defaults
from simdex.clients.chunking import (
    METADATA_ROW, PER_ROW_OVERHEAD, filter_text, items_from, joined_predictions, json_texts, offsets, padded_knn,
    plain, raw_items, search_params, shrinking, spans,
)
from simdex.clients.local import LocalTransport
from simdex.clients.plans import Plan, plan, run, transport
from simdex.clients.remote import RemoteTransport
from simdex.clients.transport import Transport
from simdex.errors import InvalidArgument
from simdex.types import (
    ClusterResult, ClusterSpec, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, HeadSpec, Item, Prediction,
    SearchResult, UpsertChunk,
)
from simdex.wire import as_matrix


class ClientBase:
    """The methods of Client and AsyncClient. Each is a plan of transport calls (simdex.clients.plans), run by the
    subclass's `_run` on the transport it attached; the docstrings and errors are the same for both."""

    remote: type  # the transport `Cls(target)` connects with: RemoteTransport, or AsyncRemoteTransport

    def __init__(self, target: str | Sequence[str] = "127.0.0.1:50051", token: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, max_message_mb: float = defaults.MAX_MESSAGE_MB,
                 timeout: float | None = None, search_slots: int | None = None):
        self._attach(self.remote(target, token, tls=tls, root_certificates=root_certificates,
                                 max_message_mb=max_message_mb, timeout=timeout, search_slots=search_slots))

    def _attach(self, transport: Transport) -> None:
        self._transport = transport
        self._infos: dict[str, CollectionInfo] = {}

    def _run(self, steps: Plan):
        raise NotImplementedError

    # ---- lifecycle ---------------------------------------------------------------------------------------
    @property
    def in_process(self) -> bool:
        """True for Client.local: the service runs in this process."""
        return self._transport.in_process

    @property
    def embedder_pool(self):
        """The in-process service's EmbedderPool (its loaded embedders, weights and device); None remotely."""
        return self._transport.embedder_pool

    @property
    def max_message_bytes(self) -> int:
        return self._transport.max_message_bytes

    @property
    def _budget(self) -> int:
        return int(self.max_message_bytes * 0.75)

    # ---- collections -------------------------------------------------------------------------------------
    @plan
    def create_collection(self, name: str, dim: int = 0, metric: str = "l2", index: str = "Flat",
                          embedder: str = "") -> CollectionInfo:
        """A new empty collection of `dim`-d vectors. With an `embedder`, leave `dim` out (0): it is the
        embedder's."""
        info = yield transport.create_collection(name, int(dim), metric, index, embedder)
        self._infos[name] = info
        return info

    @plan
    def get_collection(self, name: str) -> CollectionInfo:
        info = yield transport.get_collection(name)
        self._infos[name] = info
        return info

    def _cached(self, name: str) -> Plan:
        """dim and metric never change for a name while it lives: fetched once, not per search."""
        info = self._infos.get(name)
        return info if info is not None else (yield from ClientBase.get_collection.plan(self, name))

    @plan
    def list_collections(self) -> list[CollectionInfo]:
        return (yield transport.list_collections())

    @plan
    def delete_collection(self, name: str) -> None:
        self._infos.pop(name, None)
        yield transport.delete_collection(name)

    # ---- items -------------------------------------------------------------------------------------------
    @plan
    def upsert(self, collection: str, ids: Sequence[str], vectors=None, metadata: Sequence[dict] | None = None,
               content_hashes: Sequence[str] | None = None, *, images: Sequence[bytes] | None = None,
               texts: Sequence[str] | None = None, embedder_fingerprint: str = "") -> int:
        """Insert or replace items, all in one transaction. Returns the count.

        Give (n, d) float32 `vectors`, or, for a collection with an embedder, raw `images` (encoded PNG/JPEG or
        DICOM bytes) or `texts`, embedded by the server. Vectors you embedded yourself for such a collection name
        the `embedder_fingerprint` of the weights that made them. A bad raw item fails the whole call with
        `err.item` = its index."""
        ids = list(ids)
        metas = json_texts(metadata, len(ids))
        hashes = list(content_hashes or [])
        raw, kind = raw_items(images, texts)
        if raw is None:
            chunks = self._vector_chunks(ids, vectors, metas, hashes, embedder_fingerprint)
        elif vectors is not None:
            raise InvalidArgument("give either vectors or raw items (images, texts), not both")
        else:
            chunks = self._raw_chunks(ids, raw, kind, metas, hashes)
        return (yield transport.upsert(collection, chunks))

    def _raw_chunks(self, ids, raw, kind, metas, hashes) -> list[UpsertChunk]:
        if len(raw) != len(ids):
            raise InvalidArgument(f"{kind}: {len(raw)} items for {len(ids)} ids")
        sizes = [len(r) + len(i) + PER_ROW_OVERHEAD + (len(metas[j]) if metas else 0)
                 for j, (r, i) in enumerate(zip(raw, ids))]
        return [UpsertChunk(ids[a:b], None, metas[a:b], hashes[a:b],
                            raw[a:b] if kind == "images" else [], raw[a:b] if kind == "texts" else [])
                for a, b in spans(sizes, self._budget)]

    def _vector_chunks(self, ids, vectors, metas, hashes, fingerprint) -> list[UpsertChunk]:
        x = as_matrix(vectors, "vectors")
        if len(x) != len(ids):
            raise InvalidArgument(f"vectors: {len(x)} rows for {len(ids)} ids")
        row = x.shape[1] * 4 + PER_ROW_OVERHEAD + (max(map(len, ids)) if ids else 0)
        row += max(map(len, metas)) if metas else 0
        per = max(1, self._budget // row)
        return [UpsertChunk(ids[i:i + per], x[i:i + per], metas[i:i + per], hashes[i:i + per],
                            fingerprint=fingerprint)
                for i in range(0, len(ids), per)] or [UpsertChunk(ids, x, metas, hashes, fingerprint=fingerprint)]

    @plan
    def delete(self, collection: str, ids: Sequence[str], ignore_missing: bool = False) -> int:
        """Delete items by id, all or nothing. Returns how many were deleted."""
        return (yield transport.delete(collection, list(ids), ignore_missing))

    @plan
    def get(self, collection: str, ids: Sequence[str], with_vectors: bool = True,
            ignore_missing: bool = False) -> list[Item]:
        """Items by id, in the order asked. An unknown id is NotFound, unless ignore_missing (then skipped)."""
        ids = list(ids)
        if not ids:
            raise InvalidArgument("ids: empty batch; give at least one id")
        dim = (yield from self._cached(collection)).dim
        per = max(1, self._budget // (PER_ROW_OVERHEAD + METADATA_ROW + 4 * dim))
        call = lambda part: transport.get(collection, part, with_vectors, ignore_missing)  # noqa: E731
        items = []
        for i in range(0, len(ids), per):
            for part in (yield from shrinking(call, ids[i:i + per])):
                items.extend(part)
        return items

    @plan
    def count(self, collection: str, filter: dict | str | None = None) -> int:  # noqa: A002
        return (yield transport.count(collection, filter_text(filter)))

    # ---- embedders and the translator ---------------------------------------------------------------------
    @plan
    def list_embedders(self) -> list[EmbedderInfo]:
        """The server's registered embedders: name, modality, dim, whether its weights are present."""
        return (yield transport.list_embedders())

    @plan
    def embed(self, embedder: str, images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None
              ) -> np.ndarray:
        """(n, dim) float32 vectors of `images` (encoded image or DICOM bytes; a multi-frame DICOM gives its
        middle frame) or `texts`, made by the server's embedder `embedder`."""
        return (yield from ClientBase.embed_items.plan(self, embedder, images, texts)).vectors

    @plan
    def embed_items(self, embedder: str, images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None,
                    all_frames: bool = False) -> Embedding:
        """As embed, with the weights' fingerprint, the DICOM tags of each input and, with `all_frames`, one row
        per frame of a multi-frame DICOM (`item_index`, `frame_index` say which)."""
        raw, kind = raw_items(images, texts)
        if raw is None:
            raise InvalidArgument("embed: give images or texts")

        def call(rows):
            return transport.embed(embedder, rows if kind == "images" else [], rows if kind == "texts" else [],
                                   all_frames)

        parts = []
        for a, b in spans([len(r) + PER_ROW_OVERHEAD for r in raw], self._budget):
            with items_from(a):
                pieces = yield from shrinking(call, raw[a:b])
            parts.extend((a + off, e) for off, e in offsets(pieces))
        return Embedding(np.concatenate([e.vectors for _, e in parts]), parts[0][1].fingerprint,
                         np.concatenate([e.item_index + a for a, e in parts]),
                         np.concatenate([e.frame_index for _, e in parts]),
                         [m for _, e in parts for m in e.metadata])

    @plan
    def translate(self, texts: Sequence[str], model: str = "", beam: int = 1, max_len: int = 0) -> list[str]:
        """Translate `texts` with the server's seq2seq model `model` (default: the shipped French->English
        question model), greedy or with a beam of `beam`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InvalidArgument("translate: give at least one text")
        return [t for t, _ in (yield transport.translate(model, texts, int(beam), int(max_len)))]

    # ---- search ------------------------------------------------------------------------------------------
    @plan
    def search(self, collection: str, queries=None, k: int = 10, *, radius: float | None = None,
               filter: dict | str | None = None, params: dict | None = None,  # noqa: A002
               include_metadata: bool = False, page_size: int = 0, head: str | None = None,
               images: Sequence[bytes] | None = None, texts: Sequence[str] | None = None) -> SearchResult:
        """Nearest neighbours of each row of (nq, d) float32 `queries`.

        k-NN by default; with `radius`, every hit within it (l2: squared distance < radius; ip/cosine:
        similarity > radius), fetched page by page. `filter` restricts hits by metadata
        ({"modality": "CT"}, {"age": {"$gte": 40}}, {"site": {"$in": [...]}}, {"f": {"$ne": x}}).
        `params`: {"nprobe": int, "efSearch": int, "k_factor": int} for IVF / HNSW / RFlat kinds (one that the
        collection's kind does not use is InvalidArgument, naming those it takes).
        `head`: a projection head whose target is `collection`; `queries` are then (nq, head dim) vectors of the
        head's source collection, projected on the server before the search.
        `images` / `texts`: raw queries for a collection with an embedder, instead of `queries`.
        """
        info = yield from self._cached(collection)
        raw, kind = raw_items(images, texts)
        if raw is not None:
            if queries is not None:
                raise InvalidArgument("give either queries (vectors) or raw images/texts, not both")
            if radius is None:
                return (yield from self._raw_search(collection, info.metric, raw, kind, k, filter_text(filter),
                                                    include_metadata))
            # pages re-send the query: embed it once
            queries = yield from ClientBase.embed.plan(self, info.embedder, **{kind: raw})
        if queries is None:
            raise InvalidArgument("search: give queries (vectors) or raw images/texts")
        xq = np.asarray(queries)
        xq = as_matrix(xq[None, :] if xq.ndim == 1 else xq, "queries")  # the server checks the dimension
        sp, ftext = search_params(params), filter_text(filter)
        if radius is not None:
            return (yield from self._range(collection, xq, float(radius), ftext, sp, include_metadata, page_size,
                                           head or ""))
        return (yield from self._knn(collection, info.metric, xq, k, ftext, sp, include_metadata, head or ""))

    def _knn(self, collection, metric, xq, k, ftext, sp, include_metadata, head) -> Plan:
        answer_row = k * (PER_ROW_OVERHEAD + (METADATA_ROW if include_metadata else 0))
        per = max(1, min(self._budget // (4 * xq.shape[1] + PER_ROW_OVERHEAD), self._budget // max(1, answer_row)))

        def call(q):
            return transport.search(collection, q, k, filter=ftext, params=sp, include_metadata=include_metadata,
                                    head=head)

        answers = []
        for i in range(0, len(xq), per):
            answers.extend((yield from shrinking(call, xq[i:i + per])))
        return padded_knn(answers, k, metric, include_metadata)

    def _raw_search(self, collection, metric, raw, kind, k, ftext, include_metadata) -> Plan:
        def call(rows):
            return transport.search(collection, None, k, filter=ftext, include_metadata=include_metadata,
                                    **{kind: list(rows)})

        answers = []
        for a, b in spans([len(r) + PER_ROW_OVERHEAD for r in raw], self._budget):
            with items_from(a):
                answers.extend((yield from shrinking(call, raw[a:b])))
        return padded_knn(answers, k, metric, include_metadata)

    def _range(self, collection, xq, radius, ftext, sp, include_metadata, page_size, head) -> Plan:
        """Every hit within `radius` of each query, one query at a time, page after page."""
        ids, dists, metas = [], [], []
        for q in xq:
            token, qi, qd, qm = "", [], [], []
            while True:
                (hit,), page_metas = yield transport.search(
                    collection, q[None], 0, radius=radius, filter=ftext, params=sp,
                    include_metadata=include_metadata, page_size=page_size, page_token=token, head=head)
                qi.extend(hit.ids)
                qd.append(hit.distances)
                qm.extend(page_metas[0] if page_metas else [])
                token = hit.next_page_token
                if not token:
                    break
            ids.append(qi)
            dists.append(np.concatenate(qd).astype(np.float32))
            metas.append(qm)
        return SearchResult(ids, dists, metas if include_metadata else None)

    # ---- clustering --------------------------------------------------------------------------------------
    @plan
    def cluster(self, collection: str, bandwidth: float | None = None, *, filter: dict | str | None = None,  # noqa: A002
                kernel: str = defaults.CLUSTER_KERNEL, bin_seeding: bool = False,
                min_bin_freq: int = defaults.CLUSTER_MIN_BIN_FREQ, cluster_all: bool = True,
                max_iter: int = defaults.CLUSTER_MAX_ITER, max_seeds: int | None = defaults.CLUSTER_MAX_SEEDS,
                representatives: int = defaults.CLUSTER_REPRESENTATIVES, page_size: int = 0) -> ClusterResult:
        """Mean shift over the collection's vectors (or those matching `filter`), on the server.

        Parameters as scikit-learn's MeanShift (`bandwidth=None` estimates it; kernel "flat" takes it as the
        radius). `max_seeds`: seeds are a deterministic sample of at most this many points (None: every point).
        Member labels are fetched page by page."""
        spec = ClusterSpec(filter=filter_text(filter), bandwidth=None if bandwidth is None else float(bandwidth),
                           kernel=kernel, bin_seeding=bin_seeding, min_bin_freq=min_bin_freq, cluster_all=cluster_all,
                           max_iter=max_iter, max_seeds=max_seeds, representatives=representatives)
        token, ids, labels = "", [], []
        while True:
            page, token = yield transport.cluster(collection, spec, page_size, token)
            ids.extend(page.ids)
            labels.append(np.asarray(page.labels, dtype=np.int32))
            if not token:
                return ClusterResult(page.clusters, ids, np.concatenate(labels), page.bandwidth, page.n_iter,
                                     len(ids))

    # ---- heads -------------------------------------------------------------------------------------------
    @plan
    def train_head(self, collection: str, head: str, *, kind: str = defaults.HEAD_KIND,
                   label_field: str | None = None, labels: dict | None = None,
                   filter: dict | str | None = None,  # noqa: A002
                   test_fraction: float = defaults.HEAD_TEST_FRACTION, balanced: bool = False,
                   target_collection: str | None = None, **params) -> HeadInfo:
        """Train (or retrain: a new version) head `head` on the stored vectors of `collection`; the report.

        Classifiers (kind "logistic": scikit-learn LogisticRegression, C=1.0; "torch-logistic": a torch linear
        layer in mini-batches) learn labels from metadata field `label_field` or from `labels` {id: label}.
        Projection heads (kind "projection") map `collection`'s space into `target_collection`'s by ridge
        regression over the ids both hold. `test_fraction` of the items is held out (stratified, seeded) for
        `report.metrics`. `params`: estimator parameters (C, max_iter, solver, epochs, batch_size, lr, device,
        alpha, seed)."""
        if labels is not None:
            labels = {str(k): plain(v) for k, v in dict(labels).items()}
        spec = HeadSpec(collection=collection, head=head, kind=kind, label_field=label_field or "", labels=labels,
                        filter=filter_text(filter), test_fraction=float(test_fraction), balanced=bool(balanced),
                        target_collection=target_collection or "", params={k: plain(v) for k, v in params.items()})
        return (yield transport.train_head(spec))

    @plan
    def get_head(self, name: str) -> HeadInfo:
        """The latest version of head `name`: kind, collection, classes, metrics, trained_on, fingerprint."""
        return (yield transport.get_head(name))

    @plan
    def list_heads(self, collection: str | None = None) -> list[HeadInfo]:
        return (yield transport.list_heads(collection or ""))

    @plan
    def delete_head(self, name: str) -> int:
        """Delete every version of head `name`. Returns how many versions were deleted."""
        return (yield transport.delete_head(name))

    @plan
    def predict(self, head: str, *, ids: Sequence[str] | None = None, vectors=None, images=None,
                texts=None) -> Prediction:
        """Run head `head` on items of its collection (`ids`) or on (n, dim) float32 `vectors` of its space.

        Classifiers: `p.labels` (one per input, as stored: int stays int), `p.probabilities` (n, k) float32 in
        `p.classes` order, `p.label_indices` (n,) int64 positions in `p.classes`. Projection heads: `p.vectors`
        (n, out_dim) float32 in the target's space."""
        if images is not None or texts is not None:  # the server says what raw inputs need
            return (yield transport.predict(head, [], None, list(images or []), list(texts or [])))
        if (ids is None) == (vectors is None):
            raise InvalidArgument("predict: give exactly one of ids or vectors")
        info = yield from ClientBase.get_head.plan(self, head)
        row = 4 * (info.dim + info.out_dim) + PER_ROW_OVERHEAD
        if ids is not None:
            rows: Sequence = list(ids)
            if not rows:
                raise InvalidArgument("ids: empty batch; give at least one id")
            row += max(map(len, rows))
            call = lambda part: transport.predict(head, part, None, [], [])  # noqa: E731
        else:
            rows = as_matrix(vectors, "vectors", info.dim)
            call = lambda part: transport.predict(head, [], part, [], [])  # noqa: E731
        per = max(1, self._budget // row)
        parts = []
        for i in range(0, len(rows), per):
            parts.extend((yield from shrinking(call, rows[i:i + per])))
        return joined_predictions(head, parts)

    # ---- operations --------------------------------------------------------------------------------------
    @plan
    def backup(self, out: str | Path) -> dict:
        """A consistent point-in-time copy of the whole store (every collection with its items, the heads, and the
        index snapshots that agree with them) in the new folder `out`, taken while writes go on; returns its
        manifest (collections, counts, sequence numbers, checksums). Remotely it needs an admin token, and the
        server's copy is streamed to this machine. `simdex restore` brings it back into an empty store."""
        return (yield transport.backup(str(out)))


class Client(ClientBase):
    """A connection to a simdex server (`Client(target)`) or a service in this process (`Client.local(path)`).
    Same methods, same errors. Also a context manager.

    One Client is meant to be shared by a process's threads: while `search_slots` (default 2 per server of the
    target) of its small k-NN searches are in flight, further concurrent ones queue and go together in the next
    Search RPC, each caller getting its own answer (simdex.clients.coalesce); `search_slots=0` sends every search
    on its own."""

    remote = RemoteTransport

    @classmethod
    def local(cls, path: str, db_url: str | None = None, snapshot_interval: float = defaults.SNAPSHOT_INTERVAL_S,
              weights: dict[str, str] | None = None, device: str | None = None) -> Client:
        """An in-process simdex over data directory `path`, with the same methods as a remote Client (needs the
        server extra). `weights` maps embedder names to weights files (default: the torch hub cache); `device`:
        cpu or cuda."""
        client = cls.__new__(cls)
        client._attach(LocalTransport(path, db_url, snapshot_interval, weights, device))
        return client

    def _run(self, steps: Plan):
        return run(steps, self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
