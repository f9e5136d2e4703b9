"""The simdex client SDK: `Client("host:port")` over gRPC, or `Client.local(path)` in-process.

Needs only grpcio, protobuf and numpy (the in-process mode needs the server extra).
"""
from __future__ import annotations

from simdex.clients.remote import RemoteClient
from simdex.types import (
    Cluster, ClusterResult, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, Item, Prediction, SearchResult,
)
from simdex.errors import (
    AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, SimdexError, Unauthenticated, Unavailable,
)


class Client(RemoteClient):
    """A connection to a simdex server. Also a context manager."""

    @staticmethod
    def local(path: str, db_url: str | None = None, snapshot_interval: float = 30.0,
              weights: dict[str, str] | None = None, device: str | None = None):
        """An in-process simdex over data directory `path`, with the same methods as a remote Client.

        `weights` maps embedder names to weights files (default: the torch hub cache); `device`: cpu or cuda."""
        from simdex.clients.local import LocalClient  # noqa: PLC0415

        return LocalClient(path, db_url, snapshot_interval, weights, device)


__all__ = [
    "Client", "Cluster", "ClusterResult", "CollectionInfo", "EmbedderInfo", "Embedding",
    "HeadInfo", "Item", "Prediction", "SearchResult",
    "SimdexError", "AlreadyExists", "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
    "Unauthenticated", "Unavailable",
]
