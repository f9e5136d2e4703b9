"""What the client returns. Plain dataclasses and numpy arrays; nothing here imports grpc."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    metric: str           # "l2" (squared euclidean, smaller is better), "ip" or "cosine" (bigger is better)
    index: str            # FAISS factory description
    count: int
    trained: bool
    seq: int
    created_unix_ms: int
    embedder: str = ""


@dataclass(frozen=True)
class Item:
    id: str
    vector: np.ndarray | None   # (d,) float32, None when asked without vectors
    metadata: dict
    content_hash: str = ""


@dataclass
class SearchResult:
    """ids: one list per query, best first. distances: k-NN -> (nq, k) float32 padded with the metric's worst
    score (+inf for l2, -inf for ip/cosine) where fewer than k hits exist; range search -> a list of (m_i,)
    float32 arrays, one per query. metadata: per hit dicts when include_metadata was asked, else None."""
    ids: list[list[str]]
    distances: np.ndarray | list[np.ndarray]
    metadata: list[list[dict]] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Cluster:
    label: int
    size: int
    center: np.ndarray          # (d,) float32, in the index's space (unit vectors for cosine collections)
    representatives: list[str]  # member ids nearest the centre, nearest first


@dataclass
class ClusterResult:
    """clusters: most populated first. ids/labels: every clustered item and its cluster label ((n,) int32,
    -1 when cluster_all=False left it out)."""
    clusters: list[Cluster]
    ids: list[str]
    labels: np.ndarray
    bandwidth: float
    n_iter: int

    def members(self, label: int) -> list[str]:
        return [i for i, lab in zip(self.ids, self.labels.tolist()) if lab == label]
