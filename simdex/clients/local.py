"""The in-process transport of `Client`: the same interface as a method call on a `Simdex` service in this process.

The service returns the shared `simdex.types` results, passed straight through. It is imported when a
LocalTransport is made, not with this module: the SDK stays light without the server extra.
"""
from __future__ import annotations

import numpy as np

from simdex import defaults
from simdex.types import SearchParams


class LocalTransport:
    """A `Simdex` over data directory `path` (and database `db_url`), owned by this transport."""

    in_process = True

    def __init__(self, path: str, db_url: str | None = None, snapshot_interval: float = defaults.SNAPSHOT_INTERVAL_S,
                 weights: dict[str, str] | None = None, device: str | None = None):
        from simdex.embedder.registry import EmbedderPool  # noqa: PLC0415 - the server extra, on demand
        from simdex.service.facade import Simdex  # noqa: PLC0415

        # the Client splits requests as it does for a server, so a local batch behaves as a remote one
        self.max_message_bytes = int(defaults.MAX_MESSAGE_MB * 1024 * 1024)
        self.embedder_pool = EmbedderPool(weights, device)
        self.service = Simdex(path, db_url, snapshot_interval=snapshot_interval, embedders=self.embedder_pool)

    def close(self) -> None:
        self.service.close()

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name, dim, metric, index, embedder):
        return self.service.create_collection(name, dim, metric, index, embedder)

    def get_collection(self, name):
        return self.service.get_collection(name)

    def list_collections(self):
        return self.service.list_collections()

    def delete_collection(self, name):
        self.service.delete_collection(name)

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, name, chunks):
        """Every chunk in one service call: one transaction, as one gRPC stream is."""
        chunks = list(chunks)
        blocks = [c.vectors for c in chunks if c.vectors is not None]
        n, _ = self.service.upsert(name, [i for c in chunks for i in c.ids],
                                   np.concatenate(blocks) if blocks else None,
                                   [m for c in chunks for m in c.metadata],
                                   [h for c in chunks for h in c.content_hashes],
                                   images=[b for c in chunks for b in c.images],
                                   texts=[t for c in chunks for t in c.texts],
                                   fingerprint=chunks[0].fingerprint)
        return n

    def delete(self, name, ids, ignore_missing):
        return self.service.delete(name, ids, ignore_missing)[0]

    def get(self, name, ids, with_vectors, ignore_missing):
        return self.service.get(name, ids, with_vectors, ignore_missing)

    def count(self, name, filter):  # noqa: A002
        return self.service.count(name, filter)

    def search(self, name, queries, k, *, radius=None, filter="", params=SearchParams(),  # noqa: A002
               include_metadata=False, page_size=0, page_token="", head="", images=(), texts=()):
        return self.service.search(name, queries, k, radius=radius, filter=filter, params=params,
                                   page_size=page_size, page_token=page_token, include_metadata=include_metadata,
                                   head=head, images=images, texts=texts)

    def cluster(self, name, spec, page_size, page_token):
        return self.service.cluster(name, spec, page_size, page_token)

    # ---- heads -------------------------------------------------------------------------------------------
    def train_head(self, spec):
        return self.service.train_head(spec)

    def get_head(self, name):
        return self.service.get_head(name)

    def list_heads(self, collection):
        return self.service.list_heads(collection)

    def delete_head(self, name):
        return self.service.delete_head(name)

    def predict(self, head, ids, vectors, images, texts):
        return self.service.predict(head, ids, vectors, images, texts)

    # ---- embedders and the translator ---------------------------------------------------------------------
    def list_embedders(self):
        return self.service.list_embedders()

    def embed(self, embedder, images, texts, all_frames):
        return self.service.embed(embedder, images, texts, all_frames)

    def translate(self, model, texts, beam, max_len):
        return self.service.translate(model, texts, beam, max_len)

    # ---- operations --------------------------------------------------------------------------------------
    def backup(self, out):
        from simdex.service.backup import backup  # noqa: PLC0415 - the server extra, as the service itself

        return backup(self.service, out)
