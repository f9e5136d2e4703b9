"""The simdex client SDK: `Client("host:port")` over gRPC, or `Client.local(path)` in-process; `AsyncClient`
for asyncio (grpc.aio), with the same methods, awaitable.

Needs only grpcio, protobuf and numpy (the in-process mode needs the server extra).
"""
from __future__ import annotations

from simdex.clients.async_client import AsyncClient
from simdex.clients.client import Client
from simdex.errors import (
    AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, SimdexError, Unauthenticated, Unavailable,
)
from simdex.types import (
    Cluster, ClusterResult, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, Item, Prediction, SearchResult,
)

__all__ = [
    "AsyncClient", "Client", "Cluster", "ClusterResult", "CollectionInfo", "EmbedderInfo", "Embedding",
    "HeadInfo", "Item", "Prediction", "SearchResult",
    "SimdexError", "AlreadyExists", "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
    "Unauthenticated", "Unavailable",
]
