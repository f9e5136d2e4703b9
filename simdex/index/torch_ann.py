"""The search back-end of a collection: FAISS, or torch for exact kinds (index/torch_exact.py), chosen in one place.

`TorchAnnIndex` is an AnnIndex whose exact core (the `Flat` kind, and the exact fallback of kinds not yet trained)
is a TorchFlat instead of a FAISS IndexFlat; the id maps, tombstones, cosine handling and range post-processing stay
AnnIndex's own. Trained kinds (HNSW, IVF, PQ, ...) stay on FAISS: training returns a plain AnnIndex (see fresh).
Snapshots hold a FAISS IndexFlat of the same vectors, so a collection restores whichever back-end the server runs.

Choice (`--search-backend`, env SIMDEX_SEARCH_BACKEND): "faiss", "torch", or "auto" = torch when torch sees a CUDA
device and faiss has no GPU build, else faiss. Torch storage: env SIMDEX_TORCH_STORAGE = float32 (default), float16
or bfloat16 (half the device memory; re-scored in fp32 so results stay exact).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from simdex.errors import InvalidArgument
from simdex.index.ann import FAISS_METRIC, FLAT_KINDS, AnnIndex
from simdex.index.backend import faiss, gpu_available
from simdex.index.torch_exact import STORAGE, TorchFlat
from simdex.types import SearchParams

LOG = logging.getLogger(__name__)
BACKENDS = ("auto", "faiss", "torch")


def resolve_backend(choice: str | None = None) -> str:
    """"faiss" or "torch" for `choice` (None or "": env SIMDEX_SEARCH_BACKEND, else "auto")."""
    choice = choice or os.environ.get("SIMDEX_SEARCH_BACKEND") or "auto"
    if choice not in BACKENDS:
        raise InvalidArgument(f"search backend {choice!r} is not one of {list(BACKENDS)}")
    if choice == "auto":
        return "torch" if torch.cuda.is_available() and not gpu_available() else "faiss"
    return choice


def torch_storage() -> str:
    storage = os.environ.get("SIMDEX_TORCH_STORAGE") or "float32"
    if storage not in STORAGE:
        raise InvalidArgument(f"SIMDEX_TORCH_STORAGE={storage!r} is not one of {sorted(STORAGE)}")
    return storage


def make_index(dim: int, metric: str, desc: str, backend: str = "faiss") -> AnnIndex:
    """An empty index of kind `desc` on the resolved `backend` ("faiss" or "torch")."""
    if backend == "torch":
        return TorchAnnIndex(dim, metric, desc)
    return AnnIndex(dim, metric, desc)


def backend_name(ann: AnnIndex) -> str:
    """What answers this index's searches: "torch:DEVICE:STORAGE", "faiss:gpu" or "faiss"."""
    core = ann.index
    if isinstance(core, TorchFlat):
        return f"torch:{core.device}:{core.storage}"
    return "faiss:gpu" if gpu_available() else "faiss"


class TorchAnnIndex(AnnIndex):
    """An AnnIndex whose exact core runs on torch (`device`: default the GPU when torch sees one)."""

    def __init__(self, dim: int, metric: str, desc: str, *, device: str | None = None, storage: str | None = None,
                 block_bytes: int | None = None, index=None, trained: bool = True, min_train: int = 0):
        super().__init__(dim, metric, desc, index=index, trained=trained, min_train=min_train)
        self.options = {"device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        "storage": storage or torch_storage(), "block_bytes": block_bytes}
        self._live_dev: tuple = ((), None)  # ((ntotal, n_dead), the tombstone mask on the device)
        if type(self.index) in FLAT_KINDS and self.index.ntotal == 0:
            self.index = TorchFlat(dim, self.space, **self.options)

    @property
    def on_torch(self) -> bool:
        return isinstance(self.index, TorchFlat)

    def _live_mask(self, n: int):
        """The live positions as a device tensor, made again only after adds or removes (for unfiltered search)."""
        key = (n, self.n_dead)
        if self._live_dev[0] != key:
            self._live_dev = (key, torch.from_numpy(self._live[:n].copy()).to(self.index.device))
        return self._live_dev[1]

    def knn(self, xq: np.ndarray, k: int, params: SearchParams = SearchParams(), allowed: np.ndarray | None = None):
        if not self.on_torch:
            return super().knn(xq, k, params, allowed)
        xq = self._prep(xq)
        with self.lock.read():
            n = self.ntotal
            if allowed is not None:
                mask = self._restrict(allowed, n)
            else:
                mask = self._live_mask(n) if self.n_dead else None
            return self._scores(*self.index.search(xq, k, mask))

    def fresh(self, train_sample: np.ndarray | None = None) -> AnnIndex:
        """Empty and still on torch unless `train_sample` trains the kind (then FAISS: see AnnIndex.fresh)."""
        if train_sample is not None or not self.on_torch:
            return super().fresh(train_sample)
        return TorchAnnIndex(self.dim, self.metric, self.desc, trained=self.trained, min_train=self.min_train,
                             index=faiss.IndexFlat(self.dim, FAISS_METRIC[self.metric]), **self.options)

    def snapshot(self) -> dict[str, np.ndarray]:
        """AnnIndex's snapshot, with a FAISS IndexFlat of the stored vectors in place of the torch core."""
        if not self.on_torch:
            return super().snapshot()
        with self.lock.read():
            flat = faiss.IndexFlat(self.dim, FAISS_METRIC[self.metric])
            flat.add(self.index.vectors())
            return self.snapshot_of(flat)

    def restore(self, arrays, live_iids: np.ndarray, live_ext: list[str]) -> np.ndarray:
        """AnnIndex.restore, then an exact FAISS index moves its vectors into a torch core."""
        missing = super().restore(arrays, live_iids, live_ext)
        self._live_dev = ((), None)
        if type(self.index) in FLAT_KINDS:
            core = TorchFlat(self.dim, self.space, **self.options)
            core.add(self.index.reconstruct_n(0, self.index.ntotal))
            self.index = core
        return missing
