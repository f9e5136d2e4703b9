"""Thin translators: proto request -> simdex.convert -> Simdex call -> simdex.convert -> proto response.

Errors are mapped to statuses in one place (simdex.server.errors). The answers that can grow with the request
are checked against the message limit here, so that the client gets RESOURCE_EXHAUSTED (and splits) rather than
a message the transport refuses.
"""
from __future__ import annotations

import numpy as np

from simdex import convert
from simdex.errors import InvalidArgument, ResourceExhausted
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.errors import grpc_errors
from simdex.service.facade import Simdex
from simdex.types import UpsertChunk


def read_upsert_stream(messages) -> tuple[str, list[UpsertChunk]]:
    """An Upsert stream -> (its collection, one UpsertChunk per message), every message checked as it arrives."""
    name, chunks = None, []
    for i, msg in enumerate(messages):
        if name is None:
            name = msg.collection
        elif msg.collection != name:
            raise InvalidArgument(f"upsert message {i} names collection {msg.collection!r}, the stream began "
                                  f"with {name!r}; one stream writes one collection")
        chunks.append(convert.upsert_from_pb(msg, i))
    if name is None or not any(c.ids for c in chunks):
        raise InvalidArgument("upsert stream carried no items")
    return name, chunks


def merge_upsert(chunks: list[UpsertChunk]) -> UpsertChunk:
    """The messages of one stream -> one batch (one transaction): one kind of input, one fingerprint, one
    dimension, and content hashes for every item or for none."""
    hashes = [h for c in chunks for h in c.content_hashes]
    given = sum(bool(h) for h in hashes)
    if given == 0:
        hashes = []
    elif given < len(hashes):
        raise InvalidArgument("content_hashes: give one for every item or for none")
    blocks = [c.vectors for c in chunks if c.vectors is not None]
    images = [b for c in chunks for b in c.images]
    texts = [t for c in chunks for t in c.texts]
    if sum(map(bool, (blocks, images, texts))) > 1:
        raise InvalidArgument("upsert stream mixes vectors, images and texts; send one kind per stream")
    fingerprints = {c.fingerprint for c in chunks}
    if len(fingerprints) > 1:
        raise InvalidArgument("upsert stream names several embedder_fingerprints; send one per stream")
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1:
        raise InvalidArgument(f"upsert stream mixes vector dimensions {sorted(dims)}")
    return UpsertChunk([i for c in chunks for i in c.ids], np.concatenate(blocks) if blocks else None,
                       [m for c in chunks for m in c.metadata], hashes, images, texts, fingerprints.pop())


class SimdexServicer(pb_grpc.SimdexServicer):
    def __init__(self, service: Simdex, max_message_bytes: int):
        self.service = service
        self.max_bytes = max_message_bytes

    def _fits(self, response, what: str):
        size = response.ByteSize()
        if size > self.max_bytes:
            raise ResourceExhausted(
                f"{what} response would be {size} bytes, over the server's message limit of {self.max_bytes} "
                "bytes; ask for fewer items per call (the Python client splits requests for you)")
        return response

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
        name, chunks = read_upsert_stream(request_iterator)
        b = merge_upsert(chunks)
        n, seq = self.service.upsert(name, b.ids, b.vectors, b.metadata, b.content_hashes, images=b.images,
                                     texts=b.texts, fingerprint=b.fingerprint)
        return pb.UpsertResponse(upserted=n, seq=seq)

    @grpc_errors
    def Delete(self, request, context):
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
        hits, metas = self.service.search(**convert.search_request_from_pb(request))
        return self._fits(convert.search_response_to_pb(hits, metas), "Search")

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
