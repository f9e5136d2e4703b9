"""Thin translators: proto request -> simdex.convert -> Simdex call -> simdex.convert -> proto response.

Errors are mapped to statuses in one place (simdex.server.errors). The answers that can grow with the request
are checked against the message limit here, so that the client gets RESOURCE_EXHAUSTED (and splits) rather than
a message the transport refuses: before the search when nq x k alone proves a k-NN answer too large, after it
otherwise. Writes commit only while their call is alive and the server is not past its stop's grace period
(simdex.server.calls).
"""
from __future__ import annotations

import threading

import grpc

from simdex import convert, defaults, trace
from simdex.convert import STREAMS_FULL
from simdex.errors import ResourceExhausted
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.backup_stream import backup_chunks
from simdex.server.calls import CommitGate, client_stream
from simdex.server.errors import abort, grpc_errors
from simdex.server.upsert_stream import read_upsert_stream
from simdex.service.collection import commit_guard
from simdex.service.facade import Simdex
from simdex.service.validation import MAX_K

# The fewest bytes one k-NN hit takes in a SearchResponse: its id (tag, length, at least one character) and its
# float32 distance; with metadata, at least "{}" and its tag and length.
MIN_HIT_BYTES = 7
MIN_METADATA_BYTES = 4


class SimdexServicer(pb_grpc.SimdexServicer):
    def __init__(self, service: Simdex, max_message_bytes: int, gate: CommitGate | None = None,
                 search_streams: int = defaults.SEARCH_STREAMS):
        self.service = service
        self.max_bytes = max_message_bytes
        self.gate = gate or CommitGate()
        self.search_streams = search_streams  # SearchStream calls open at once, each holding a worker thread
        self._streams = threading.BoundedSemaphore(max(0, search_streams))

    def _too_large(self, size: int, what: str, would: str = "would be") -> ResourceExhausted:
        return ResourceExhausted(
            f"{what} response {would} {size} bytes, over the server's message limit of {self.max_bytes} bytes; "
            "ask for fewer items per call (the Python client splits requests for you)")

    def _fits(self, response, what: str):
        size = response.ByteSize()
        if size > self.max_bytes:
            raise self._too_large(size, what)
        return response

    def _knn_can_fit(self, kw: dict) -> None:
        """Refuse, before any work, an unfiltered k-NN search whose answer cannot fit one message: nq queries
        with min(k, items) hits each, every hit at least MIN_HIT_BYTES."""
        if kw["radius"] is not None or kw["filter"] or not 0 < kw["k"] <= MAX_K:  # a bad k: the service says so
            return
        nq = len(kw["images"]) + len(kw["texts"]) or (len(kw["queries"]) if kw["queries"] is not None else 0)
        per_hit = MIN_HIT_BYTES + (MIN_METADATA_BYTES if kw["include_metadata"] else 0)
        if nq * kw["k"] * per_hit <= self.max_bytes:
            return
        least = nq * min(kw["k"], self.service.get_collection(kw["name"]).count) * per_hit
        if least > self.max_bytes:
            raise self._too_large(least, f"Search ({nq} queries, k={kw['k']})", "would be at least")

    # ---- collections -------------------------------------------------------------------------------------
    @grpc_errors
    def CreateCollection(self, request, context):
        return convert.collection_to_pb(self.service.create_collection(
            request.name, request.dim, request.metric, request.index, request.embedder))

    @grpc_errors
    def GetCollection(self, request, context):
        return convert.collection_to_pb(self.service.get_collection(request.name))

    @grpc_errors
    def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(
            collections=[convert.collection_to_pb(c) for c in self.service.list_collections()])

    @grpc_errors
    def DeleteCollection(self, request, context):
        self.service.delete_collection(request.name)
        return pb.DeleteCollectionResponse()

    # ---- items -------------------------------------------------------------------------------------------
    @grpc_errors
    def Upsert(self, request_iterator, context):
        messages = client_stream(request_iterator, context, "Upsert")
        name, b = read_upsert_stream(messages, self.service.limits, lambda n: self.service.get_collection(n).dim,
                                     self.max_bytes)
        with commit_guard(self.gate.guard(context, "Upsert")):
            n, seq = self.service.upsert(name, b.ids, b.vectors, b.metadata, b.content_hashes, images=b.images,
                                         texts=b.texts, fingerprint=b.fingerprint)
        return pb.UpsertResponse(upserted=n, seq=seq)

    @grpc_errors
    def Delete(self, request, context):
        with commit_guard(self.gate.guard(context, "Delete")):
            n, seq = self.service.delete(request.collection, request.ids, request.ignore_missing)
        return pb.DeleteResponse(deleted=n, seq=seq)

    @grpc_errors
    def Get(self, request, context):
        items = self.service.get(request.collection, request.ids, with_vectors=not request.omit_vectors,
                                 ignore_missing=request.ignore_missing)
        return self._fits(convert.items_to_pb(items, not request.omit_vectors), "Get")

    @grpc_errors
    def Count(self, request, context):
        return pb.CountResponse(count=self.service.count(request.collection, request.filter))

    @grpc_errors
    def Search(self, request, context):
        return self._search(request)

    def SearchStream(self, requests, context):
        """Each request answered in turn as Search answers it; the first that Search would refuse ends the stream
        with its status. A stopping server cancels a stream waiting for its next request, and ends one busy with a
        request with OK after its answer; refused RESOURCE_EXHAUSTED (trailing `simdex-streams: full`) beyond the
        server's streams; cancelled after waiting the gate's `stream_idle_s` for a request (CommitGate.cut_idle)."""
        if not self._streams.acquire(blocking=False):
            context.set_trailing_metadata(((STREAMS_FULL, "full"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"SearchStream: all {self.search_streams} search streams of this server are open; "
                          "send Search calls" if self.search_streams else
                          "SearchStream: this server serves no search streams (--search-streams 0); send Search calls")
        try:
            while True:
                try:
                    request = self.gate.next_request(requests, context)
                except grpc.RpcError:  # cancelled (by a stop, too), or the client went away
                    return
                if request is None:  # the client half-closed, or the server is stopping
                    return
                try:
                    response = self._search(request)
                except Exception as exc:  # noqa: BLE001 - the stream ends with Search's status
                    abort(context, exc, "SearchStream")
                yield response
        finally:
            self._streams.release()

    def _search(self, request):
        if trace.ON:
            trace.begin()
        kw = convert.search_request_from_pb(request)
        if trace.ON:
            trace.mark("unpack")
        self._knn_can_fit(kw)
        hits, metas = self.service.search(**kw)
        if convert.packs(request):  # three fields whatever nq is: built, then measured
            response = self._fits(convert.packed_response_to_pb(hits), "Search")
        else:
            texts = convert.metadata_texts(metas)
            least = convert.search_response_min_bytes(hits, texts)
            if least > self.max_bytes:  # refused before its many parts are built
                raise self._too_large(least, "Search", "would be at least")
            response = self._fits(convert.search_response_to_pb(hits, texts), "Search")
        if trace.ON:
            trace.mark("response")
            trace.end()
        return response

    @grpc_errors
    def Cluster(self, request, context):
        spec, page_size, page_token = convert.cluster_request_from_pb(request)
        result, next_token = self.service.cluster(request.collection, spec, page_size, page_token)
        return self._fits(convert.cluster_response_to_pb(result, next_token), "Cluster")

    # ---- heads -------------------------------------------------------------------------------------------
    @grpc_errors
    def TrainHead(self, request, context):
        return convert.head_to_pb(self.service.train_head(convert.head_spec_from_pb(request)))

    @grpc_errors
    def GetHead(self, request, context):
        return convert.head_to_pb(self.service.get_head(request.name))

    @grpc_errors
    def ListHeads(self, request, context):
        return pb.ListHeadsResponse(heads=[convert.head_to_pb(h) for h in self.service.list_heads(request.collection)])

    @grpc_errors
    def DeleteHead(self, request, context):
        return pb.DeleteHeadResponse(versions=self.service.delete_head(request.name))

    @grpc_errors
    def Predict(self, request, context):
        p = self.service.predict(*convert.predict_request_from_pb(request))
        return self._fits(convert.prediction_to_pb(p), "Predict")

    # ---- embedders and the translator ---------------------------------------------------------------------
    @grpc_errors
    def ListEmbedders(self, request, context):
        return pb.ListEmbeddersResponse(
            embedders=[convert.embedder_to_pb(e) for e in self.service.list_embedders()])

    @grpc_errors
    def Embed(self, request, context):
        e = self.service.embed(request.embedder, list(request.images), list(request.texts), request.all_frames)
        return self._fits(convert.embedding_to_pb(e), "Embed")

    @grpc_errors
    def Translate(self, request, context):
        out = self.service.translate(request.model, list(request.texts), request.beam, request.max_len)
        return pb.TranslateResponse(translations=[t for t, _ in out], scores=[sc for _, sc in out])

    # ---- operations --------------------------------------------------------------------------------------
    @grpc_errors
    def Backup(self, request, context):
        return backup_chunks(self.service, self.max_bytes)
