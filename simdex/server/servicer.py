"""Thin translators: proto request -> Simdex call -> proto response."""
from __future__ import annotations

import json

import numpy as np

from simdex.errors import InvalidArgument, ResourceExhausted
from simdex.index.ann import Params
from simdex.service.clustering import DEFAULT_REPRESENTATIVES, ClusterSpec
from simdex.service.heads import HeadSpec, json_object
from simdex.service import paging
from simdex.service.facade import Simdex
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.errors import grpc_errors
from simdex.wire import pack, unpack


def collection_pb(s) -> pb.Collection:
    return pb.Collection(name=s.name, dim=s.dim, metric=s.metric, index=s.index, count=s.count,
                         trained=s.trained, seq=s.seq, created_unix_ms=s.created_unix_ms, embedder=s.embedder,
                         embedder_fingerprint=s.embedder_fingerprint)


def embedder_pb(e) -> pb.Embedder:
    return pb.Embedder(name=e.name, modality=e.modality, dim=e.dim, description=e.description,
                       weights_present=e.weights_present, weights_file=e.weights_file, fingerprint=e.fingerprint)


def head_pb(r) -> pb.Head:
    return pb.Head(name=r.name, collection=r.collection, kind=r.kind, version=r.version,
                   classes=[json.dumps(c, ensure_ascii=False) for c in r.classes], metrics=json.dumps(r.metrics),
                   created_unix_ms=r.created_unix_ms, trained_on=r.trained_on,
                   embedder_fingerprint=r.embedder_fingerprint, target_collection=r.target_collection, dim=r.dim,
                   out_dim=r.out_dim, params=json.dumps(r.params, ensure_ascii=False))


def matrix_pb(x: np.ndarray) -> pb.Matrix:
    data, shape = pack(x)
    return pb.Matrix(data=data, shape=shape)


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

    @grpc_errors
    def CreateCollection(self, request, context):
        return collection_pb(self.service.create_collection(
            request.name, request.dim, request.metric, request.index, request.embedder))

    @grpc_errors
    def GetCollection(self, request, context):
        return collection_pb(self.service.get_collection(request.name))

    @grpc_errors
    def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(collections=[collection_pb(s) for s in self.service.list_collections()])

    @grpc_errors
    def DeleteCollection(self, request, context):
        self.service.delete_collection(request.name)
        return pb.DeleteCollectionResponse()

    @grpc_errors
    def Upsert(self, request_iterator, context):
        name, ids, blocks, metas, hashes, images, texts, fps = None, [], [], [], [], [], [], set()
        for i, msg in enumerate(request_iterator):
            if name is None:
                name = msg.collection
            elif msg.collection != name:
                raise InvalidArgument(f"upsert message {i} names collection {msg.collection!r}, the stream began "
                                      f"with {name!r}; one stream writes one collection")
            if msg.metadata and len(msg.metadata) != len(msg.ids):
                raise InvalidArgument(f"upsert message {i}: {len(msg.metadata)} metadata for {len(msg.ids)} ids")
            if msg.content_hashes and len(msg.content_hashes) != len(msg.ids):
                raise InvalidArgument(f"upsert message {i}: {len(msg.content_hashes)} content_hashes for "
                                      f"{len(msg.ids)} ids")
            kinds = [k for k, on in (("vectors", msg.HasField("vectors")), ("images", bool(msg.images)),
                                     ("texts", bool(msg.texts))) if on]
            if len(kinds) != 1:
                raise InvalidArgument(f"upsert message {i}: give exactly one of vectors, images or texts "
                                      f"(got {kinds or 'none'})")
            if msg.HasField("vectors"):
                x = unpack(msg.vectors.data, msg.vectors.shape, f"upsert message {i} vectors")
                if len(x) != len(msg.ids):
                    raise InvalidArgument(f"upsert message {i}: {len(x)} vectors for {len(msg.ids)} ids")
                blocks.append(x)
            else:
                raw = msg.images or msg.texts
                if len(raw) != len(msg.ids):
                    raise InvalidArgument(f"upsert message {i}: {len(raw)} {kinds[0]} for {len(msg.ids)} ids")
                (images if msg.images else texts).extend(raw)
            fps.add(msg.embedder_fingerprint)
            ids.extend(msg.ids)
            metas.extend(msg.metadata or [""] * len(msg.ids))
            hashes.extend(msg.content_hashes or [""] * len(msg.ids))
        if name is None or not ids:
            raise InvalidArgument("upsert stream carried no items")
        given = sum(bool(h) for h in hashes)
        if given == 0:
            hashes = []
        elif given < len(hashes):
            raise InvalidArgument("content_hashes: give one for every item or for none")
        if sum(map(bool, (blocks, images, texts))) > 1:
            raise InvalidArgument("upsert stream mixes vectors, images and texts; send one kind per stream")
        if len(fps) > 1:
            raise InvalidArgument("upsert stream names several embedder_fingerprints; send one per stream")
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise InvalidArgument(f"upsert stream mixes vector dimensions {sorted(dims)}")
        n, seq = self.service.upsert(name, ids, np.concatenate(blocks) if blocks else None, metas, hashes,
                                     images=images, texts=texts, fingerprint=fps.pop())
        return pb.UpsertResponse(upserted=n, seq=seq)

    @grpc_errors
    def Delete(self, request, context):
        n, seq = self.service.delete(request.collection, request.ids, request.ignore_missing)
        return pb.DeleteResponse(deleted=n, seq=seq)

    @grpc_errors
    def Get(self, request, context):
        items = self.service.get(request.collection, request.ids, with_vectors=not request.omit_vectors,
                                 ignore_missing=request.ignore_missing)
        resp = pb.GetResponse(
            ids=[it.id for it in items],
            metadata=[json.dumps(it.metadata, ensure_ascii=False) for it in items],
            content_hashes=[it.content_hash for it in items],
        )
        if not request.omit_vectors and items:
            resp.vectors.CopyFrom(matrix_pb(np.stack([it.vector for it in items])))
        return self._fits(resp, "Get")

    @grpc_errors
    def Count(self, request, context):
        return pb.CountResponse(count=self.service.count(request.collection, request.filter))

    @grpc_errors
    def Search(self, request, context):
        raw = bool(request.images or request.texts)
        xq = None if raw and not request.HasField("queries") else unpack(
            request.queries.data, request.queries.shape, "queries")
        p = request.params
        hits, metas = self.service.search(
            request.collection, xq, request.k, images=list(request.images), texts=list(request.texts),
            radius=request.radius if request.HasField("radius") else None,
            filter=request.filter,
            params=Params(p.nprobe, p.ef_search, p.k_factor),
            page_size=request.page_size, page_token=request.page_token,
            include_metadata=request.include_metadata, head=request.head,
        )
        resp = pb.SearchResponse()
        for i, h in enumerate(hits):
            qh = resp.results.add()
            qh.ids.extend(h.ids)
            qh.distances = np.ascontiguousarray(h.distances, dtype="<f4").tobytes()
            if metas is not None:
                qh.metadata.extend(json.dumps(m, ensure_ascii=False) for m in metas[i])
            if h.next_offset is not None:
                qh.next_page_token = paging.encode(offset=h.next_offset)
        return self._fits(resp, "Search")

    @grpc_errors
    def Cluster(self, request, context):
        spec = ClusterSpec(
            filter=request.filter,
            bandwidth=request.bandwidth if request.HasField("bandwidth") else None,
            kernel=request.kernel or "flat",
            bin_seeding=request.bin_seeding,
            min_bin_freq=request.min_bin_freq or 1,
            cluster_all=request.cluster_all if request.HasField("cluster_all") else True,
            max_iter=request.max_iter or 300,
            max_seeds=(request.max_seeds or None) if request.HasField("max_seeds") else 1000,
            representatives=request.representatives or DEFAULT_REPRESENTATIVES,
        )
        result, start, end, token = self.service.cluster(request.collection, spec, request.page_size,
                                                         request.page_token)
        resp = pb.ClusterResponse(bandwidth=result.bandwidth, n_iter=result.n_iter, n_points=len(result.ids),
                                  member_ids=result.ids[start:end], member_labels=result.labels[start:end].tolist(),
                                  next_page_token=token)
        for c in result.clusters:
            resp.clusters.add(label=c.label, size=c.size, center=np.asarray(c.center, dtype="<f4").tobytes(),
                              representatives=c.representatives)
        return self._fits(resp, "Cluster")

    @grpc_errors
    def TrainHead(self, request, context):
        spec = HeadSpec(
            collection=request.collection, head=request.head, kind=request.kind or "logistic",
            label_field=request.label_field,
            labels=json_object(request.labels, "labels") if request.labels else None,
            filter=request.filter,
            test_fraction=round(request.test_fraction, 6) if request.HasField("test_fraction") else 0.2,
            balanced=request.balanced, target_collection=request.target_collection,
            params=json_object(request.params, "params") if request.params else {},
        )
        return head_pb(self.service.train_head(spec))

    @grpc_errors
    def GetHead(self, request, context):
        return head_pb(self.service.get_head(request.name))

    @grpc_errors
    def ListHeads(self, request, context):
        return pb.ListHeadsResponse(heads=[head_pb(h) for h in self.service.list_heads(request.collection)])

    @grpc_errors
    def DeleteHead(self, request, context):
        return pb.DeleteHeadResponse(versions=self.service.delete_head(request.name))

    @grpc_errors
    def Predict(self, request, context):
        x = unpack(request.vectors.data, request.vectors.shape, "vectors") if request.HasField("vectors") else None
        p = self.service.predict(request.head, list(request.ids), x, list(request.images), list(request.texts))
        resp = pb.PredictResponse(version=p.version, classes=[json.dumps(c, ensure_ascii=False) for c in p.classes])
        if p.probabilities is not None:
            resp.label_indices.extend(p.label_indices.tolist())
            resp.probabilities.CopyFrom(matrix_pb(p.probabilities))
        if p.projections is not None:
            resp.projections.CopyFrom(matrix_pb(p.projections))
        return self._fits(resp, "Predict")

    @grpc_errors
    def ListEmbedders(self, request, context):
        return pb.ListEmbeddersResponse(embedders=[embedder_pb(e) for e in self.service.list_embedders()])

    @grpc_errors
    def Embed(self, request, context):
        e = self.service.embed(request.embedder, list(request.images), list(request.texts), request.all_frames)
        resp = pb.EmbedResponse(fingerprint=e.fingerprint, item_index=e.item_index.tolist(),
                                frame_index=e.frame_index.tolist(),
                                metadata=[json.dumps(m, ensure_ascii=False) for m in e.metadata])
        resp.vectors.CopyFrom(matrix_pb(e.vectors))
        return self._fits(resp, "Embed")

    @grpc_errors
    def Translate(self, request, context):
        out = self.service.translate(request.model, list(request.texts), request.beam, request.max_len)
        return pb.TranslateResponse(translations=[t for t, _ in out], scores=[sc for _, sc in out])
