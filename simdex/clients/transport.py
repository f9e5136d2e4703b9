"""The one interface behind `Client`: each method is one call of the simdex service, with its arguments and results
in `simdex.types` (the service facade's own signatures). `RemoteTransport` makes it a gRPC call, `LocalTransport`
a method call on a `Simdex` in this process. Checking arguments, splitting messages and paging stay in `Client`.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from simdex.types import (
    ClusterResult, ClusterSpec, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, HeadSpec, Item, Prediction,
    SearchParams, UpsertChunk,
)


class QueryHits(Protocol):
    """One query's answer: ids best first, their (m,) float32 distances, and "" or the next page's token."""
    ids: list[str]
    distances: np.ndarray
    next_page_token: str


class Transport(Protocol):
    in_process: bool            # True for the in-process service
    embedder_pool: Any          # the in-process service's EmbedderPool; None remotely
    max_message_bytes: int      # requests and answers are split to fit this

    def close(self) -> None: ...

    def create_collection(self, name: str, dim: int, metric: str, index: str, embedder: str) -> CollectionInfo: ...

    def get_collection(self, name: str) -> CollectionInfo: ...

    def list_collections(self) -> list[CollectionInfo]: ...

    def delete_collection(self, name: str) -> None: ...

    def upsert(self, name: str, chunks: Iterable[UpsertChunk]) -> int:
        """Every chunk in one transaction (one gRPC stream); returns how many items were stored."""

    def delete(self, name: str, ids: list[str], ignore_missing: bool) -> int: ...

    def get(self, name: str, ids: list[str], with_vectors: bool, ignore_missing: bool) -> list[Item]: ...

    def count(self, name: str, filter: str) -> int: ...  # noqa: A002

    def search(self, name: str, queries: np.ndarray | None, k: int, *, radius: float | None = None,
               filter: str = "", params: SearchParams = SearchParams(),  # noqa: A002
               include_metadata: bool = False, page_size: int = 0, page_token: str = "", head: str = "",
               images: Sequence[bytes] = (), texts: Sequence[str] = (),
               ) -> tuple[Sequence[QueryHits], list[list[dict]] | None]:
        """(nq, d) float32 `queries` (or raw images/texts) -> (one QueryHits per query, per-hit metadata when
        `include_metadata`, else None)."""

    def cluster(self, name: str, spec: ClusterSpec, page_size: int, page_token: str) -> tuple[ClusterResult, str]:
        """One page: the result with this page's members in ids/labels, and the next page's token ("" at the end)."""

    def train_head(self, spec: HeadSpec) -> HeadInfo: ...

    def get_head(self, name: str) -> HeadInfo: ...

    def list_heads(self, collection: str) -> list[HeadInfo]: ...

    def delete_head(self, name: str) -> int: ...

    def predict(self, head: str, ids: Sequence[str], vectors: np.ndarray | None, images: Sequence[bytes],
                texts: Sequence[str]) -> Prediction: ...

    def list_embedders(self) -> list[EmbedderInfo]: ...

    def embed(self, embedder: str, images: Sequence[bytes], texts: Sequence[str], all_frames: bool) -> Embedding: ...

    def translate(self, model: str, texts: list[str], beam: int, max_len: int) -> list[tuple[str, float]]: ...

    def backup(self, out: str) -> dict:
        """A consistent copy of the whole store written to the new folder `out` on this machine; its manifest."""
