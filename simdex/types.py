"""The result and request types shared by the service, the servicer and both client transports.

Plain dataclasses and numpy arrays: nothing here imports grpc, protobuf, sqlalchemy, faiss or torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simdex import defaults


# ---- requests ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParams:
    """Search-time knobs of an index kind; 0 means the kind's default (nprobe for IVF, efSearch for HNSW,
    k_factor for refined kinds)."""
    nprobe: int = 0
    ef_search: int = 0
    k_factor: int = 0


@dataclass(frozen=True)
class ClusterSpec:
    """Mean shift parameters of a Cluster call (scikit-learn's MeanShift names). `filter` is a JSON text."""
    filter: str = ""
    bandwidth: float | None = None
    kernel: str = defaults.CLUSTER_KERNEL
    bin_seeding: bool = False
    min_bin_freq: int = defaults.CLUSTER_MIN_BIN_FREQ
    cluster_all: bool = True
    max_iter: int = defaults.CLUSTER_MAX_ITER
    max_seeds: int | None = defaults.CLUSTER_MAX_SEEDS
    representatives: int = defaults.CLUSTER_REPRESENTATIVES


@dataclass(frozen=True)
class HeadSpec:
    """What to train: head `head` of `kind` on collection `collection` (labels from `label_field` or `labels`,
    {id: label}; projections map into `target_collection`). `filter` is a JSON text."""
    collection: str
    head: str
    kind: str = defaults.HEAD_KIND
    label_field: str = ""
    labels: dict[str, Any] | None = None
    filter: str = ""
    test_fraction: float = defaults.HEAD_TEST_FRACTION
    balanced: bool = False
    target_collection: str = ""
    params: dict[str, Any] = field(default_factory=dict)


# ---- results -------------------------------------------------------------------------------------------------


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
    embedder_fingerprint: str = ""
    unavailable: str = ""  # why the collection cannot be used ("" when it can): its data failed to load at start
    search_backend: str = ""  # what answers its searches: "faiss", "faiss:gpu", "torch:DEVICE:STORAGE"


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    modality: str          # "image" | "text"
    dim: int
    description: str
    weights_present: bool
    weights_file: str      # the weights file's name, no folder ("" for random weights); full paths stay in the server's log
    fingerprint: str       # of the loaded weights; "" until the server loads them


@dataclass
class Embedding:
    """vectors (rows, dim) float32; row r is input item_index[r], frame frame_index[r], with metadata[r] (the
    input's allow-listed DICOM tags, {} otherwise)."""
    vectors: np.ndarray
    fingerprint: str
    item_index: np.ndarray
    frame_index: np.ndarray
    metadata: list[dict]


@dataclass
class UpsertChunk:
    """One Upsert message: ids with either vectors (n, d) float32 or raw images / texts."""
    ids: list[str]
    vectors: np.ndarray | None
    metadata: list[str]
    content_hashes: list[str]
    images: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    fingerprint: str = ""


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
    -1 when cluster_all=False left it out). n_points: how many items were clustered, over every page (one page of
    a paged answer holds only some of them in ids/labels)."""
    clusters: list[Cluster]
    ids: list[str]
    labels: np.ndarray
    bandwidth: float
    n_iter: int
    n_points: int = 0

    def members(self, label: int) -> list[str]:
        return [i for i, lab in zip(self.ids, self.labels.tolist()) if lab == label]


@dataclass(frozen=True)
class HeadInfo:
    """A linear head (its latest version). metrics: held-out accuracy, macro_f1, confusion (rows true, columns
    predicted, in classes order), n_train, n_test, n_unlabelled ... for classifiers; r2, mse, mean_cosine,
    retrieval_top1 ... for projections."""
    name: str
    collection: str
    kind: str                   # "logistic" | "torch-logistic" | "projection"
    version: int
    classes: list               # classifiers: label values (int stays int, str stays str), probability order
    metrics: dict
    created_unix_ms: int
    trained_on: int
    embedder_fingerprint: str
    target_collection: str = ""
    dim: int = 0                # input dimension
    out_dim: int = 0            # number of classes, or the target collection's dimension
    params: dict = field(default_factory=dict)


@dataclass
class Prediction:
    """classes: the head's label values; labels: one per input (classifiers); probabilities: (n, len(classes))
    float32 in classes order; vectors: (n, out_dim) float32 projections (projection heads); version: the head
    version that answered; label_indices: (n,) int64 positions of labels in classes (classifiers)."""
    classes: list
    labels: list | None
    probabilities: np.ndarray | None
    vectors: np.ndarray | None
    version: int
    label_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vectors) if self.vectors is not None else len(self.labels or [])
