"""The gRPC transport of `Client`: each method is one RPC, its messages made and read by `simdex.convert`."""
from __future__ import annotations

import grpc

from simdex import convert, defaults
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.types import SearchParams


class RemoteTransport:
    """A channel to a simdex server. Errors arrive as the SimdexError of their status, `item` restored."""

    in_process = False
    embedder_pool = None

    def __init__(self, target: str = "127.0.0.1:50051", token: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, max_message_mb: float = defaults.MAX_MESSAGE_MB,
                 timeout: float | None = None):
        self.target = target
        self.max_message_bytes = int(max_message_mb * 1024 * 1024)
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", -1)]  # the server decides what is too large
        if tls or root_certificates:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            if token:
                creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
            self.channel = grpc.secure_channel(target, creds, options=options)
            self._md = None
        else:
            self.channel = grpc.insecure_channel(target, options=options)
            self._md = (("authorization", f"Bearer {token}"),) if token else None
        self.stub = pb_grpc.SimdexStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._md)
        except grpc.RpcError as exc:
            trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
            raise convert.error_from_status(exc.code().name, exc.details() or str(exc.code()), trailing) from None

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name, dim, metric, index, embedder):
        return convert.collection_from_pb(self._call(self.stub.CreateCollection, pb.CreateCollectionRequest(
            name=name, dim=dim, metric=metric, index=index, embedder=embedder)))

    def get_collection(self, name):
        return convert.collection_from_pb(self._call(self.stub.GetCollection, pb.GetCollectionRequest(name=name)))

    def list_collections(self):
        r = self._call(self.stub.ListCollections, pb.ListCollectionsRequest())
        return [convert.collection_from_pb(c) for c in r.collections]

    def delete_collection(self, name):
        self._call(self.stub.DeleteCollection, pb.DeleteCollectionRequest(name=name))

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, name, chunks):
        return self._call(self.stub.Upsert, (convert.upsert_to_pb(name, c) for c in chunks)).upserted

    def delete(self, name, ids, ignore_missing):
        r = self._call(self.stub.Delete, pb.DeleteRequest(collection=name, ids=ids, ignore_missing=ignore_missing))
        return r.deleted

    def get(self, name, ids, with_vectors, ignore_missing):
        r = self._call(self.stub.Get, pb.GetRequest(collection=name, ids=ids, omit_vectors=not with_vectors,
                                                    ignore_missing=ignore_missing))
        return convert.items_from_pb(r, with_vectors)

    def count(self, name, filter):  # noqa: A002
        return self._call(self.stub.Count, pb.CountRequest(collection=name, filter=filter)).count

    def search(self, name, queries, k, *, radius=None, filter="", params=SearchParams(),  # noqa: A002
               include_metadata=False, page_size=0, page_token="", head="", images=(), texts=()):
        req = convert.search_request_to_pb(name, queries, k, radius=radius, filter=filter, params=params,
                                           include_metadata=include_metadata, page_size=page_size,
                                           page_token=page_token, head=head, images=images, texts=texts)
        return convert.search_response_from_pb(self._call(self.stub.Search, req), include_metadata)

    def cluster(self, name, spec, page_size, page_token):
        req = convert.cluster_request_to_pb(name, spec, page_size, page_token)
        return convert.cluster_response_from_pb(self._call(self.stub.Cluster, req))

    # ---- heads -------------------------------------------------------------------------------------------
    def train_head(self, spec):
        return convert.head_from_pb(self._call(self.stub.TrainHead, convert.head_spec_to_pb(spec)))

    def get_head(self, name):
        return convert.head_from_pb(self._call(self.stub.GetHead, pb.GetHeadRequest(name=name)))

    def list_heads(self, collection):
        r = self._call(self.stub.ListHeads, pb.ListHeadsRequest(collection=collection))
        return [convert.head_from_pb(h) for h in r.heads]

    def delete_head(self, name):
        return self._call(self.stub.DeleteHead, pb.DeleteHeadRequest(name=name)).versions

    def predict(self, head, ids, vectors, images, texts):
        req = convert.predict_request_to_pb(head, ids, vectors, images, texts)
        return convert.prediction_from_pb(self._call(self.stub.Predict, req))

    # ---- embedders and the translator ---------------------------------------------------------------------
    def list_embedders(self):
        r = self._call(self.stub.ListEmbedders, pb.ListEmbeddersRequest())
        return [convert.embedder_from_pb(e) for e in r.embedders]

    def embed(self, embedder, images, texts, all_frames):
        req = pb.EmbedRequest(embedder=embedder, images=images, texts=texts, all_frames=all_frames)
        return convert.embedding_from_pb(self._call(self.stub.Embed, req))

    def translate(self, model, texts, beam, max_len):
        r = self._call(self.stub.Translate, pb.TranslateRequest(model=model, texts=texts, beam=beam, max_len=max_len))
        return list(zip(r.translations, r.scores))
