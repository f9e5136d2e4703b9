"""The in-process transport: the same interface over a Simdex service in this process (needs the server extra)."""
from __future__ import annotations

from simdex.clients.client import ClientBase
from simdex.types import Cluster, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, Item, Prediction


def _info(s) -> CollectionInfo:
    return CollectionInfo(s.name, s.dim, s.metric, s.index, s.count, s.trained, s.seq, s.created_unix_ms, s.embedder,
                          s.embedder_fingerprint)


def _head(r) -> HeadInfo:
    return HeadInfo(r.name, r.collection, r.kind, r.version, list(r.classes), dict(r.metrics), r.created_unix_ms,
                    r.trained_on, r.embedder_fingerprint, r.target_collection, r.dim, r.out_dim, dict(r.params))


class LocalClient(ClientBase):
    def __init__(self, path: str, db_url: str | None = None, snapshot_interval: float = 30.0,
                 weights: dict[str, str] | None = None, device: str | None = None):
        from simdex.embedder.registry import EmbedderPool  # noqa: PLC0415 - keep the client import light
        from simdex.service.facade import Simdex  # noqa: PLC0415

        self.service = Simdex(path, db_url, snapshot_interval=snapshot_interval,
                              embedders=EmbedderPool(weights, device))

    def close(self) -> None:
        self.service.close()

    def _create(self, name, dim, metric, index, embedder):
        return _info(self.service.create_collection(name, dim, metric, index, embedder))

    def _get_collection(self, name):
        return _info(self.service.get_collection(name))

    def _list(self):
        return [_info(s) for s in self.service.list_collections()]

    def _drop(self, name):
        self.service.delete_collection(name)

    def _upsert(self, name, chunks):
        import numpy as np  # noqa: PLC0415

        chunks = list(chunks)
        ids = [i for c in chunks for i in c.ids]
        blocks = [c.vectors for c in chunks if c.vectors is not None]
        return self.service.upsert(name, ids, np.concatenate(blocks) if blocks else None,
                                   [m for c in chunks for m in c.metadata],
                                   [h for c in chunks for h in c.content_hashes],
                                   images=[b for c in chunks for b in c.images],
                                   texts=[t for c in chunks for t in c.texts],
                                   fingerprint=chunks[0].fingerprint)[0]

    def _delete(self, name, ids, ignore_missing):
        return self.service.delete(name, ids, ignore_missing)[0]

    def _get(self, name, ids, with_vectors, ignore_missing):
        return [Item(r.id, r.vector, r.metadata, r.content_hash)
                for r in self.service.get(name, ids, with_vectors, ignore_missing)]

    def _count(self, name, filter_text):
        return self.service.count(name, filter_text)

    def _search(self, name, xq, k, radius, filter_text, params, include_metadata, page_size, token, head="",
                images=(), texts=()):
        from simdex.index.ann import Params  # noqa: PLC0415
        from simdex.service import paging  # noqa: PLC0415

        hits, metas = self.service.search(name, xq, k, radius=radius, filter=filter_text, params=Params(*params),
                                          page_size=page_size, page_token=token, include_metadata=include_metadata,
                                          head=head, images=images, texts=texts)
        return [(h.ids, h.distances, metas[i] if metas else [],
                 paging.encode(offset=h.next_offset) if h.next_offset is not None else "")
                for i, h in enumerate(hits)]

    def _cluster(self, name, spec, page_size, token):
        from simdex.service.clustering import ClusterSpec  # noqa: PLC0415

        if spec["bandwidth"] is not None:
            spec = {**spec, "bandwidth": float(spec["bandwidth"])}
        r, start, end, nxt = self.service.cluster(name, ClusterSpec(**spec), page_size, token)
        clusters = [Cluster(c.label, c.size, c.center.copy(), list(c.representatives)) for c in r.clusters]
        return clusters, r.bandwidth, r.n_iter, r.ids[start:end], r.labels[start:end].tolist(), nxt

    def _train_head(self, spec):
        from simdex.service.heads import HeadSpec  # noqa: PLC0415

        return _head(self.service.train_head(HeadSpec(**spec)))

    def _get_head(self, name):
        return _head(self.service.get_head(name))

    def _list_heads(self, collection):
        return [_head(r) for r in self.service.list_heads(collection)]

    def _delete_head(self, name):
        return self.service.delete_head(name)

    def _predict(self, head, ids, x, images, texts):
        p = self.service.predict(head, ids, x, images, texts)
        if p.projections is not None:
            return Prediction([], None, None, p.projections, p.version)
        classes = list(p.classes)
        return Prediction(classes, [classes[i] for i in p.label_indices.tolist()], p.probabilities, None, p.version)

    def _list_embedders(self):
        return [EmbedderInfo(e.name, e.modality, e.dim, e.description, e.weights_present, e.weights_file,
                             e.fingerprint) for e in self.service.list_embedders()]

    def _embed(self, embedder, images, texts, all_frames):
        e = self.service.embed(embedder, images, texts, all_frames)
        return Embedding(e.vectors, e.fingerprint, e.item_index, e.frame_index, e.metadata)

    def _translate(self, model, texts, beam, max_len):
        return self.service.translate(model, texts, beam, max_len)
