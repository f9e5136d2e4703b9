"""The gRPC transport of the client."""
from __future__ import annotations

import json

import grpc
import numpy as np

from simdex.clients.client import DEFAULT_MAX_MESSAGE_MB, ClientBase
from simdex.types import Cluster, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, Item, Prediction
from simdex.errors import from_code
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.wire import pack, unpack, unpack_floats


def _info(c: pb.Collection) -> CollectionInfo:
    return CollectionInfo(c.name, c.dim, c.metric, c.index, c.count, c.trained, c.seq, c.created_unix_ms, c.embedder,
                          c.embedder_fingerprint)


def _head(h: pb.Head) -> HeadInfo:
    return HeadInfo(h.name, h.collection, h.kind, h.version, [json.loads(c) for c in h.classes], json.loads(h.metrics),
                    h.created_unix_ms, h.trained_on, h.embedder_fingerprint, h.target_collection, h.dim, h.out_dim,
                    json.loads(h.params or "{}"))


def _matrix(x: np.ndarray) -> pb.Matrix:
    data, shape = pack(x)
    return pb.Matrix(data=data, shape=shape)


class RemoteClient(ClientBase):
    def __init__(self, target: str = "127.0.0.1:50051", token: str | None = None, *, tls: bool = False,
                 root_certificates: bytes | None = None, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
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
            raise from_code(exc.code().name, exc.details() or str(exc.code())) from None

    def _create(self, name, dim, metric, index, embedder):
        return _info(self._call(self.stub.CreateCollection, pb.CreateCollectionRequest(
            name=name, dim=dim, metric=metric, index=index, embedder=embedder)))

    def _get_collection(self, name):
        return _info(self._call(self.stub.GetCollection, pb.GetCollectionRequest(name=name)))

    def _list(self):
        return [_info(c) for c in self._call(self.stub.ListCollections, pb.ListCollectionsRequest()).collections]

    def _drop(self, name):
        self._call(self.stub.DeleteCollection, pb.DeleteCollectionRequest(name=name))

    def _upsert(self, name, chunks):
        messages = (
            pb.UpsertRequest(collection=name, ids=c.ids, vectors=_matrix(c.vectors) if c.vectors is not None else None,
                             metadata=c.metadata, content_hashes=c.content_hashes, images=c.images, texts=c.texts,
                             embedder_fingerprint=c.fingerprint)
            for c in chunks
        )
        return self._call(self.stub.Upsert, messages).upserted

    def _delete(self, name, ids, ignore_missing):
        return self._call(self.stub.Delete, pb.DeleteRequest(collection=name, ids=ids,
                                                             ignore_missing=ignore_missing)).deleted

    def _get(self, name, ids, with_vectors, ignore_missing):
        r = self._call(self.stub.Get, pb.GetRequest(collection=name, ids=ids, omit_vectors=not with_vectors,
                                                    ignore_missing=ignore_missing))
        X = unpack(r.vectors.data, r.vectors.shape) if with_vectors and r.ids else [None] * len(r.ids)
        return [Item(i, None if v is None else v.copy(), json.loads(m), h)
                for i, v, m, h in zip(r.ids, X, r.metadata, r.content_hashes)]

    def _count(self, name, filter_text):
        return self._call(self.stub.Count, pb.CountRequest(collection=name, filter=filter_text)).count

    def _search(self, name, xq, k, radius, filter_text, params, include_metadata, page_size, token, head="",
                images=(), texts=()):
        req = pb.SearchRequest(collection=name, queries=_matrix(xq) if xq is not None else None, k=k,
                               filter=filter_text, images=images, texts=texts,
                               params=pb.SearchParams(nprobe=params[0], ef_search=params[1], k_factor=params[2]),
                               include_metadata=include_metadata, page_size=page_size, page_token=token, head=head)
        if radius is not None:
            req.radius = radius
        r = self._call(self.stub.Search, req)
        return [(list(h.ids), unpack_floats(h.distances), [json.loads(m) for m in h.metadata], h.next_page_token)
                for h in r.results]

    def _cluster(self, name, spec, page_size, token):
        req = pb.ClusterRequest(collection=name, filter=spec["filter"], kernel=spec["kernel"],
                                bin_seeding=spec["bin_seeding"], min_bin_freq=spec["min_bin_freq"],
                                cluster_all=spec["cluster_all"], max_iter=spec["max_iter"],
                                max_seeds=spec["max_seeds"] or 0, representatives=spec["representatives"],
                                page_size=page_size, page_token=token)
        if spec["bandwidth"] is not None:
            req.bandwidth = spec["bandwidth"]
        r = self._call(self.stub.Cluster, req)
        clusters = [Cluster(c.label, c.size, unpack_floats(c.center).copy(), list(c.representatives))
                    for c in r.clusters]
        return clusters, r.bandwidth, r.n_iter, list(r.member_ids), list(r.member_labels), r.next_page_token

    def _train_head(self, spec):
        req = pb.TrainHeadRequest(
            collection=spec["collection"], head=spec["head"], kind=spec["kind"], label_field=spec["label_field"],
            labels=json.dumps(spec["labels"], ensure_ascii=False) if spec["labels"] is not None else "",
            filter=spec["filter"], test_fraction=spec["test_fraction"], balanced=spec["balanced"],
            target_collection=spec["target_collection"],
            params=json.dumps(spec["params"]) if spec["params"] else "")
        return _head(self._call(self.stub.TrainHead, req))

    def _get_head(self, name):
        return _head(self._call(self.stub.GetHead, pb.GetHeadRequest(name=name)))

    def _list_heads(self, collection):
        return [_head(h) for h in self._call(self.stub.ListHeads, pb.ListHeadsRequest(collection=collection)).heads]

    def _delete_head(self, name):
        return self._call(self.stub.DeleteHead, pb.DeleteHeadRequest(name=name)).versions

    def _predict(self, head, ids, x, images, texts):
        req = pb.PredictRequest(head=head, ids=ids, images=images, texts=texts)
        if x is not None:
            req.vectors.CopyFrom(_matrix(x))
        r = self._call(self.stub.Predict, req)
        if r.HasField("projections"):
            return Prediction([], None, None, unpack(r.projections.data, r.projections.shape).copy(), r.version)
        classes = [json.loads(c) for c in r.classes]
        P = unpack(r.probabilities.data, r.probabilities.shape, "probabilities").copy()
        return Prediction(classes, [classes[i] for i in r.label_indices], P, None, r.version)

    def _list_embedders(self):
        r = self._call(self.stub.ListEmbedders, pb.ListEmbeddersRequest())
        return [EmbedderInfo(e.name, e.modality, e.dim, e.description, e.weights_present, e.weights_file,
                             e.fingerprint) for e in r.embedders]

    def _embed(self, embedder, images, texts, all_frames):
        r = self._call(self.stub.Embed, pb.EmbedRequest(embedder=embedder, images=images, texts=texts,
                                                        all_frames=all_frames))
        return Embedding(unpack(r.vectors.data, r.vectors.shape, "vectors").copy(), r.fingerprint,
                         np.asarray(r.item_index, np.int64), np.asarray(r.frame_index, np.int64),
                         [json.loads(m) for m in r.metadata])

    def _translate(self, model, texts, beam, max_len):
        r = self._call(self.stub.Translate, pb.TranslateRequest(model=model, texts=texts, beam=beam, max_len=max_len))
        return list(zip(r.translations, r.scores))
