"""Embedders in the service: listing them, Embed and Translate, and turning a collection's raw items (images,
texts) into vectors, checked against the fingerprint of the weights its stored vectors were made with."""
from __future__ import annotations

import logging

import numpy as np

from simdex.embedder import registry
from simdex.embedder.inputs import Embedded, embed_raw
from simdex.embedder.registry import EmbedderPool
from simdex.errors import FailedPrecondition, InvalidArgument
from simdex.service.collection import Collection
from simdex.service.validation import MAX_EMBED
from simdex.store.items import Store
from simdex.types import EmbedderInfo, Embedding

LOG = logging.getLogger(__name__)
DEFAULT_TRANSLATOR = "questions-fr-en"


class Embedders:
    """The service's embedders: `pool` loads each one once, on first use."""

    def __init__(self, pool: EmbedderPool, store: Store):
        self.pool, self.store = pool, store

    def collection_dim(self, embedder: str, dim: int) -> int:
        """The dimension of a new collection filled by `embedder` (`dim` 0: the embedder's). Fails now when the
        embedder is unknown, its dimension differs or its weights are missing."""
        espec = registry.spec(embedder)
        if dim and dim != espec.dim:
            raise InvalidArgument(f"dim {dim} does not match embedder {embedder!r}, which gives {espec.dim}-d "
                                  "vectors; leave dim out (0) to take the embedder's")
        registry.weights_path(embedder, self.pool.weights.get(embedder))  # missing weights: fail now
        return espec.dim

    def of(self, col: Collection):
        """The loaded embedder that fills `col`; FailedPrecondition for a collection of plain vectors."""
        if not col.info.embedder:
            raise FailedPrecondition(f"collection {col.name!r} stores plain vectors (no embedder): send vectors, "
                                     "or create a collection with an embedder to send raw images or texts")
        return self.pool.get(col.info.embedder)

    def list(self) -> list[EmbedderInfo]:
        p = self.pool
        return [EmbedderInfo(s.name, s.modality, s.dim, s.description, p.present(s.name), p.where(s.name),
                             p.loaded_fingerprint(s.name)) for s in registry.specs()]

    def embed(self, embedder: str, images=(), texts=(), all_frames: bool = False) -> Embedding:
        """Images (encoded bytes, DICOM too) or texts -> an Embedding of (rows, dim) float32 vectors."""
        registry.spec(embedder)
        n = len(images) + len(texts)
        if n > MAX_EMBED:
            raise InvalidArgument(f"embed: {n} items in one request, more than {MAX_EMBED}; send fewer per call")
        e = embed_raw(self.pool.get(embedder), images, texts, all_frames=all_frames)
        return Embedding(e.vectors, e.fingerprint, e.item_index, e.frame_index, e.metadata)

    def translate(self, model: str, texts, beam: int = 1, max_len: int = 0) -> list[tuple[str, float]]:
        """(translation, score) per text."""
        from simdex.embedder.seq2seq.serving import translate  # noqa: PLC0415 - torch model loads on demand

        return translate(model or DEFAULT_TRANSLATOR, list(texts), beam, max_len)

    def raw(self, col: Collection, images, texts, ids=None) -> Embedded:
        """Raw items for `col` (images or texts), embedded by its embedder; errors name an item by its id when
        `ids` are given."""
        return embed_raw(self.of(col), images, texts, ids)

    def queries(self, col: Collection, images, texts) -> np.ndarray:
        """Raw queries -> (nq, dim) float32 in `col`'s space; FailedPrecondition when the loaded weights are not
        the ones the collection was filled with (their vectors would live in another space)."""
        e = self.raw(col, images, texts)
        fp = self.store.embedder_fingerprint(col.info.id)
        if fp and fp != e.fingerprint:
            raise FailedPrecondition(
                f"collection {col.name!r} was filled with embedder weights {fp}, but {col.info.embedder!r} is now "
                f"loaded with {e.fingerprint}; refill the collection or serve the original weights")
        return e.vectors
