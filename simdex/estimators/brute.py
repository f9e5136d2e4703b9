"""Brute-force neighbour sums for mean shift: FAISS exact range search (CPU, any d) and torch (CUDA, or CPU tensors
for tests). Used above the kd-tree's dimensions (simdex.estimators.cells) and on GPUs.

Same interface as cells.TreeSums: for seeds S (m, d) return (sum of weights (m,) float64, weighted sum of points
(m, d) float64, points within bandwidth (m,) int64). X (n, d) float32 or float64; FAISS searches a float32 copy.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

from simdex.estimators.cells import GAUSS_REACH
from simdex.index.backend import faiss

LOG = logging.getLogger(__name__)

RESULT_BUDGET = 1 << 24  # range-search results held at once (id int64 + distance float32: ~200 MB)
TILE = 1 << 24           # torch path: seeds x points block of distances (128 MB float64)

_GPU_RES: list = []  # one StandardGpuResources for the process; it must outlive every GPU index made from it


def flat_index(xb: np.ndarray):
    """An exact L2 FAISS index over xb (n, d) (copied to float32)."""
    index = faiss.IndexFlatL2(xb.shape[1])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    return index


def to_gpu(index):
    """A GPU copy of a CPU FAISS index, on the process's one StandardGpuResources."""
    if not _GPU_RES:
        _GPU_RES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_GPU_RES[0], 0, index)


class FaissSums:
    """Neighbour sums by exact FAISS range search (radius bandwidth**2, (3 bandwidth)**2 for the gaussian kernel),
    in batches sized so that the range results held at once stay under RESULT_BUDGET; no n x n matrix exists.
    FAISS keeps distances strictly below the radius, so the radius is the next float32 up: within means <=."""

    def __init__(self, X: np.ndarray, bandwidth: float, kernel: str, use_gpu: bool = False):
        self.X, self.kernel, self.bw2 = X, kernel, float(bandwidth) ** 2
        reach2 = self.bw2 * (GAUSS_REACH ** 2 if kernel == "gaussian" else 1.0)
        self.radius = float(np.nextafter(np.float32(reach2), np.float32(np.inf)))
        self.cpu = flat_index(X)
        self.gpu = to_gpu(self.cpu) if use_gpu else None   # copied from the CPU index: X converted once

    def _range(self, S):
        if self.gpu is None:
            return self.cpu.range_search(S, self.radius)
        from faiss.contrib.exhaustive_search import range_search_gpu  # noqa: PLC0415
        return range_search_gpu(S, self.radius, self.gpu, self.cpu)

    def __call__(self, S: np.ndarray) -> tuple:
        m, n = len(S), len(self.X)
        S32 = np.ascontiguousarray(S, dtype=np.float32)
        wsum, wx, count = np.zeros(m), np.zeros(S.shape), np.zeros(m, dtype=np.int64)
        guess, i0 = n, 0  # results per seed: the most seen so far in this call (n before the first batch)
        while i0 < m:
            b = max(1, RESULT_BUDGET // max(guess, 1))
            lims, D, I = self._range(S32[i0:i0 + b])
            if self.kernel == "flat":
                w = np.ones(len(I), dtype=self.X.dtype)
                wsum[i0:i0 + b] = count[i0:i0 + b] = np.diff(lims)
            else:
                w = np.exp(-0.5 * D.astype(np.float64) / self.bw2)
                wsum[i0:i0 + b] = _segment_sums(w, lims)
                count[i0:i0 + b] = _segment_sums((D <= self.bw2).astype(np.int64), lims)
                w = w.astype(self.X.dtype)
            wx[i0:i0 + b] = sparse.csr_matrix((w, I, lims), shape=(len(lims) - 1, n)) @ self.X
            guess = max(guess if i0 else 1, 2 * int(np.diff(lims).max(initial=1)))
            i0 += b
        return wsum, wx, count


def _segment_sums(v: np.ndarray, lims: np.ndarray) -> np.ndarray:
    """Sums of v over the segments lims[i]:lims[i+1] (empty segments give 0)."""
    cs = np.concatenate([np.zeros(1, dtype=v.dtype), np.cumsum(v)])
    return cs[lims[1:]] - cs[lims[:-1]]


class TorchSums:
    """The same sums on torch tensors (CUDA, or CPU for tests): distances by torch.cdist over (seeds x points)
    tiles of at most TILE entries, weights masked to the kernel's reach."""

    def __init__(self, X: np.ndarray, bandwidth: float, kernel: str, device: str):
        import torch  # noqa: PLC0415  (heavy; only this path needs it)

        self.torch, self.dev, self.kernel, self.bw = torch, torch.device(device), kernel, float(bandwidth)
        self.reach = self.bw * (GAUSS_REACH if kernel == "gaussian" else 1.0)
        # float64: distances by cdist's matrix-product form lose ~|x|^2 * 1e-7 in float32, enough at 4096-d for
        # boundary points to flip between iterations so that seeds never met the stopping test (300 iterations
        # instead of 1, seen on an H100/H200).
        self.X = torch.from_numpy(np.ascontiguousarray(X)).to(self.dev, dtype=torch.float64)

    def __call__(self, S: np.ndarray) -> tuple:
        torch, n = self.torch, len(self.X)
        wsum, wx, count = np.zeros(len(S)), np.zeros(S.shape), np.zeros(len(S), dtype=np.int64)
        b = min(len(S), 4096)
        c = max(1, TILE // b)
        with torch.no_grad():
            for i0 in range(0, len(S), b):
                Sb = torch.from_numpy(np.ascontiguousarray(S[i0:i0 + b])).to(self.dev, dtype=torch.float64)
                acc_w = torch.zeros(len(Sb), dtype=torch.float64, device=self.dev)
                acc_x = torch.zeros(Sb.shape, dtype=torch.float64, device=self.dev)
                acc_n = torch.zeros(len(Sb), dtype=torch.int64, device=self.dev)
                for j0 in range(0, n, c):
                    Xc = self.X[j0:j0 + c]
                    dist = torch.cdist(Sb, Xc)
                    inside = dist <= self.bw
                    if self.kernel == "flat":
                        W = inside.double()
                    else:
                        W = torch.exp(-0.5 * (dist / self.bw) ** 2) * (dist <= self.reach)
                    acc_x += W @ Xc
                    acc_w += W.sum(1, dtype=torch.float64)
                    acc_n += inside.sum(1)
                wsum[i0:i0 + b], wx[i0:i0 + b] = acc_w.cpu().numpy(), acc_x.cpu().numpy()
                count[i0:i0 + b] = acc_n.cpu().numpy()
        return wsum, wx, count
