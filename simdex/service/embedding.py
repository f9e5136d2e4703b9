"""Embedders in the service: listing them, Embed and Translate, and turning a collection's raw items (images,
texts) into vectors, checked against the fingerprint of the weights its stored vectors were made with.

Raw images are decoded within the server's decoding budget (`Limits.max_decoded_mpixels`, `max_dicom_mb`).
Nothing that leaves through the service names a server path: ListEmbedders gives each weights file by its name,
and an error about loading weights names the file, not its folder (the full message goes to the server's log)."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from simdex.embedder import registry
from simdex.embedder.inputs import Embedded, embed_raw
from simdex.embedder.registry import EmbedderPool
from simdex.errors import FailedPrecondition, InvalidArgument, SimdexError
from simdex.limits import Limits
from simdex.service.collection import Collection
from simdex.service.validation import MAX_EMBED
from simdex.store.items import Store
from simdex.types import EmbedderInfo, Embedding

LOG = logging.getLogger(__name__)
DEFAULT_TRANSLATOR = "questions-fr-en"


class EmbedCounts:
    """Raw items embedded and seconds spent embedding them, per embedder, since the service started: what the
    server's metrics report (read by a scrape; the lock guards one dict update, never the embedding)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_name: dict[str, tuple[int, float]] = {}

    def add(self, embedder: str, items: int, seconds: float) -> None:
        with self._lock:
            n, s = self._by_name.get(embedder, (0, 0.0))
            self._by_name[embedder] = (n + items, s + seconds)

    def totals(self) -> dict[str, tuple[int, float]]:
        """{embedder: (items, seconds)}, a copy."""
        with self._lock:
            return dict(self._by_name)


class Embedders:
    """The service's embedders: `pool` loads each one once, on first use; `limits` bounds what decoding costs."""

    def __init__(self, pool: EmbedderPool, store: Store, limits: Limits | None = None):
        self.pool, self.store, self.limits = pool, store, limits or Limits()
        self.counts = EmbedCounts()
        LOG.info("embedder weights (full paths are for this log only; clients see file names): %s",
                 "; ".join(f"{s.name}={self.pool.where(s.name) or 'random'}"
                           f"{'' if self.pool.present(s.name) else ' (missing)'}" for s in registry.specs()))

    def collection_dim(self, embedder: str, dim: int) -> int:
        """The dimension of a new collection filled by `embedder` (`dim` 0: the embedder's). Fails now when the
        embedder is unknown, its dimension differs or its weights are missing."""
        espec = registry.spec(embedder)
        if dim and dim != espec.dim:
            raise InvalidArgument(f"dim {dim} does not match embedder {embedder!r}, which gives {espec.dim}-d "
                                  "vectors; leave dim out (0) to take the embedder's")
        with self._server_paths_hidden(embedder):
            registry.weights_path(embedder, self.pool.weights.get(embedder))  # missing weights: fail now
        return espec.dim

    def of(self, col: Collection):
        """The loaded embedder that fills `col`; FailedPrecondition for a collection of plain vectors."""
        if not col.info.embedder:
            raise FailedPrecondition(f"collection {col.name!r} stores plain vectors (no embedder): send vectors, "
                                     "or create a collection with an embedder to send raw images or texts")
        return self._load(col.info.embedder)

    def list(self) -> list[EmbedderInfo]:
        """Every registered embedder, its weights file by name only ("" for random weights) and whether the server
        has it: where the file lives is the server's business (its log at start, `simdex embedders` there)."""
        p = self.pool
        return [EmbedderInfo(s.name, s.modality, s.dim, s.description, p.present(s.name), Path(p.where(s.name)).name,
                             p.loaded_fingerprint(s.name)) for s in registry.specs()]

    def _load(self, name: str):
        with self._server_paths_hidden(name):
            return self.pool.get(name)

    @contextmanager
    def _server_paths_hidden(self, name: str):
        """A SimdexError raised inside (missing or unreadable weights) leaves with the weights file's folder
        replaced by words and its path by its name; the full message is logged here."""
        try:
            yield
        except SimdexError as e:
            where = self.pool.where(name)
            if not where or (where not in e.message and str(Path(where).parent) not in e.message):
                raise
            LOG.warning("embedder %s: %s", name, e.message)
            path = Path(where)
            public = e.message.replace(where, path.name)
            public = public.replace(repr(str(path.parent)), "the server's weights folder")
            public = public.replace(str(path.parent), "the server's weights folder")
            raise type(e)(public, item=e.item) from None

    def embed(self, embedder: str, images=(), texts=(), all_frames: bool = False) -> Embedding:
        """Images (encoded bytes, DICOM too) or texts -> an Embedding of (rows, dim) float32 vectors."""
        registry.spec(embedder)
        n = len(images) + len(texts)
        if n > MAX_EMBED:
            raise InvalidArgument(f"embed: {n} items in one request, more than {MAX_EMBED}; send fewer per call")
        e = self._counted(embedder, self._load(embedder), images, texts, all_frames=all_frames)
        return Embedding(e.vectors, e.fingerprint, e.item_index, e.frame_index, e.metadata)

    def translate(self, model: str, texts, beam: int = 1, max_len: int = 0) -> list[tuple[str, float]]:
        """(translation, score) per text."""
        from simdex.embedder.seq2seq.serving import translate  # noqa: PLC0415 - torch model loads on demand

        return translate(model or DEFAULT_TRANSLATOR, list(texts), beam, max_len)

    def raw(self, col: Collection, images, texts, ids=None) -> Embedded:
        """Raw items for `col` (images or texts), embedded by its embedder; errors name an item by its id when
        `ids` are given."""
        return self._counted(col.info.embedder, self.of(col), images, texts, ids=ids)

    def _counted(self, name: str, emb, images, texts, **kw) -> Embedded:
        """embed_raw with the loaded embedder `emb` (named `name`), counted in `counts` when it succeeds."""
        t0 = time.perf_counter()
        e = embed_raw(emb, images, texts, limits=self.limits, **kw)
        self.counts.add(name, len(images) + len(texts), time.perf_counter() - t0)
        return e

    def queries(self, col: Collection, images, texts) -> np.ndarray:
        """Raw queries -> (nq, dim) float32 in `col`'s space; FailedPrecondition, before anything is decoded, when
        the loaded embedder's fingerprint (its weights and numeric path) is not the one the collection was filled
        with: its vectors would live in another space, or come from another arithmetic."""
        fp, now = self.store.embedder_fingerprint(col.info.id), self.of(col).fingerprint
        if fp and fp != now:
            raise FailedPrecondition(
                f"collection {col.name!r} was filled by {col.info.embedder!r} with {_path_of(fp)}, but the server "
                f"now runs it with {_path_of(now)}; vectors of the two do not mix: refill the collection, or serve "
                "the original weights (`simdex serve --weights NAME=FILE`) on the original path (SIMDEX_BF16=1 "
                "for bf16, 0 for fp32)")
        return self.raw(col, images, texts).vectors


def _path_of(fingerprint: str) -> str:
    """"weights sha256:ab12... on the bf16 path": what an embedder fingerprint says (simdex.embedder.base)."""
    weights, bf16, _ = fingerprint.partition(":bf16")
    return f"weights {weights} on the {'bf16' if bf16 else 'fp32'} path"
