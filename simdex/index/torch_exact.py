"""Exact k-NN and range search on torch tensors: the vectors resident on a device (a CUDA GPU, or the CPU), scored by
chunked matmul + top-k. For GPU hosts whose faiss has no GPU build; the same code runs on CPU torch, so CI tests it.

Imports torch, numpy and simdex.distances only (no faiss, no SQL): bench/gpu_paths.py imports this module on a GPU
host that has torch and nothing else, so the code it measures is the code the server runs.

Scores. Internally everything is "bigger is better": ip as is, l2 as minus the squared distance (cosine
collections arrive as unit vectors under l2, see index/ann.py). A search first ranks with the fast scores of the
matmul, then re-scores the best `candidates(k)` of each query exactly in fp32 from fp32 vectors (l2 from the
differences, as FAISS's direct path) and checks that no vector outside them can still belong to the top k: the fast
scores carry a bound on their error (`_error_bound`), and when the k-th exact score does not beat the last
candidate's fast score by that bound, the query is searched again with four times the candidates (all of them at
worst). So fp16/bf16 storage, which halves the device memory, returns what exact fp32 search returns.

Memory. The (queries x vectors) block of scores never exceeds `block_bytes`: queries and vectors are taken in
chunks. Upserts append into a buffer whose capacity doubles (no whole copy per upsert); fp16/bf16 storage keeps
unit rows on the device (no overflow, relative rounding) with their fp32 norms, and the fp32 rows in host memory
for re-scoring and snapshots.

Shapes: xb, xq (n, d) float32 numpy; D (nq, k) float32 (squared L2 or inner product, FAISS's convention); P (nq, k)
int64 positions, -1 where fewer than k are allowed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
_SUBNORMAL_STEP = {torch.float16: 2.0 ** -25, torch.bfloat16: 2.0 ** -134}  # half the smallest subnormal
BLOCK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}  # default budget of one block of scores, per device type
MIN_CAPACITY = 1024
WIDEN = 4  # a query whose candidates could not prove its top k is searched again with this many times more
FULL_SCAN = 16  # ... until that would re-score more than 1/FULL_SCAN of the rows: then one fp32 scan of them all


def _to(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array on `device` (read-only arrays, as the wire gives them, are copied: torch writes through)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


class TorchFlat:
    """Exact search over (ntotal, d) vectors on `device` in the space "l2" (squared) or "ip".

    `storage`: "float32" (default), "float16" or "bfloat16" (half the device memory, results still exact).
    `block_bytes`: the budget of one block of scores. `rerank`: candidates re-scored per query, as a multiple of k.
    Not thread-safe for writes: the caller (AnnIndex) holds a write lock around add/reset, a read lock around
    searches. `ntotal`, `d`, `is_trained`, `add` and `range_search` mirror the FAISS index API that AnnIndex uses."""

    is_trained = True

    def __init__(self, d: int, space: str, *, device: str | torch.device = "cpu", storage: str = "float32",
                 block_bytes: int | None = None, rerank: int = 2):
        if space not in ("l2", "ip"):
            raise ValueError(f"space must be 'l2' or 'ip', got {space!r}")
        if storage not in STORAGE:
            raise ValueError(f"storage must be one of {sorted(STORAGE)}, got {storage!r}")
        self.d, self.space, self.storage = d, space, storage
        self.device = torch.device(device)
        self.dtype = STORAGE[storage]
        self.half = self.dtype != torch.float32
        self.block_bytes = block_bytes or BLOCK_BYTES.get(self.device.type, BLOCK_BYTES["cuda"])
        self.rerank = max(1, rerank)
        if self.half and self.device.type == "cuda":
            # the error bound assumes fp32 accumulation; split-K reductions in half precision would break it
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        self.reset()

    # ---- storage -----------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._n

    def reset(self) -> None:
        self._n = 0
        self._x = torch.zeros((0, self.d), dtype=self.dtype, device=self.device)  # rows (unit rows when half)
        self._norm = torch.zeros(0, dtype=torch.float32, device=self.device)      # |x| in fp32
        self._host = np.zeros((0, self.d), dtype=np.float32)                      # fp32 rows, half storage only
        self._max_norm = 0.0

    def _grow(self, need: int) -> None:
        """Capacity doubles: appends copy the buffer O(log n) times in all, never once per upsert."""
        cap = len(self._norm)
        if need <= cap:
            return
        cap = max(need, 2 * cap, MIN_CAPACITY)
        x = torch.empty((cap, self.d), dtype=self.dtype, device=self.device)
        x[: self._n] = self._x[: self._n]
        norm = torch.zeros(cap, dtype=torch.float32, device=self.device)
        norm[: self._n] = self._norm[: self._n]
        self._x, self._norm = x, norm
        if self.half:
            self._host = np.resize(self._host, (cap, self.d))

    def add(self, xb: np.ndarray | torch.Tensor) -> None:
        """Append (n, d) float32 rows at positions ntotal..ntotal+n-1 (a numpy array, or a tensor already on the
        device: bench/gpu_paths.py makes its millions of rows there)."""
        if isinstance(xb, torch.Tensor):
            x = xb.to(self.device, torch.float32)
        else:
            x = _to(np.ascontiguousarray(xb, dtype=np.float32), self.device)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"vectors must be (n, {self.d}), got {tuple(x.shape)}")
        n0, n = self._n, len(x)
        self._grow(n0 + n)
        norm = torch.linalg.vector_norm(x, dim=1)
        self._norm[n0:n0 + n] = norm
        if self.half:
            self._host[n0:n0 + n] = x.cpu().numpy()
            x = x / norm.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # unit rows: no overflow in fp16
        self._x[n0:n0 + n] = x.to(self.dtype)
        self._max_norm = max(self._max_norm, float(norm.max()) if n else 0.0)
        self._n = n0 + n

    def vectors(self) -> np.ndarray:
        """(ntotal, d) float32 copy of the stored rows (for snapshots)."""
        if self.half:
            return self._host[: self._n].copy()
        return self._x[: self._n].cpu().numpy().copy()

    # ---- scores ------------------------------------------------------------------------------------------
    def _error_bound(self) -> float:
        """c such that |fast(q.x) - q.x| <= c |q| |x|: rounding q and x to the storage type (and the product's
        output), subnormal steps, fp32 accumulation over d terms; TF32 where CUDA matmuls are allowed to use it."""
        acc = (self.d + 2) * 2.0 ** -24
        if not self.half:
            tf32 = self.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
            return 1.01 * (acc + (3 * 2.0 ** -11 if tf32 else 0.0))
        u = _UNIT_ROUNDOFF[self.dtype]
        return 1.01 * (3 * u + 2 * math.sqrt(self.d) * _SUBNORMAL_STEP[self.dtype] + acc * (1 + 3 * u))

    def _margin(self, qn: torch.Tensor) -> torch.Tensor:
        """(nq,) bound on |fast - exact| of any score of queries of norms `qn` (bigger-is-better form)."""
        m, c = self._max_norm, self._error_bound()
        if self.space == "ip":
            return c * qn * m
        eps = (self.d + 8) * 2.0 ** -24  # the norms and sums of |q|^2 + |x|^2 - 2 q.x in fp32
        return 2 * c * qn * m + eps * (qn * qn + m * m)

    def _fast(self, q: torch.Tensor, qn: torch.Tensor, a: int, b: int, fp32: bool = False) -> torch.Tensor:
        """(nq, b - a) fast scores of device queries q (fp32) against rows a..b-1, minus |q|^2 for l2. `fp32`:
        from the fp32 rows (copied from host memory under half storage), as FAISS's IndexFlat scores a batch."""
        x = self._x[a:b]
        if fp32 and self.half:
            s = q @ torch.from_numpy(self._host[a:b]).to(self.device).T
        elif self.half:
            qu = (q / qn.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).to(self.dtype)
            s = (qu @ x.T).float().mul_(self._norm[a:b]).mul_(qn[:, None])
        else:
            s = q @ x.T
        if self.space == "l2":
            s.mul_(2).sub_(self._norm[a:b].square()).sub_((qn * qn)[:, None])
        return s

    def _exact(self, xq: np.ndarray, q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        """(nq, c) exact fp32 scores of queries at positions P (nq, c) (-1: -inf), from the fp32 rows."""
        ok = P >= 0
        Pc = P.clamp_min(0)
        if self.half:  # the fp32 rows live in host memory
            Pn = Pc.cpu().numpy()
            rows, qq = torch.from_numpy(self._host[Pn]), _to(xq, torch.device("cpu"))[:, None, :]
        else:
            rows, qq = self._x[Pc], q[:, None, :]
        s = (rows - qq).square_().sum(-1).neg_() if self.space == "l2" else (rows * qq).sum(-1)
        return s.to(self.device).masked_fill_(~ok, -math.inf)

    def _chunks(self, nq: int, per_score: int, n: int) -> tuple[int, int]:
        """(query chunk, vector chunk) sizes whose block of scores fits block_bytes."""
        vb = max(1, min(n, self.block_bytes // (per_score * max(1, min(nq, 1024)))))
        qb = max(1, min(nq, self.block_bytes // (per_score * vb)))
        return qb, vb

    # ---- k-NN --------------------------------------------------------------------------------------------
    def search(self, xq: np.ndarray, k: int, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Best k of (nq, d) float32 queries among the positions `mask` allows (bool (ntotal,) numpy or device
        tensor; None: all) -> (D, P) in FAISS's convention (see the module docstring)."""
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        n, nq = self._n, len(xq)
        m = None if mask is None else torch.as_tensor(mask, device=self.device)[:n]
        n_ok = n if m is None else int(m.sum())
        S = torch.full((nq, k), -math.inf, device=self.device)
        P = torch.full((nq, k), -1, dtype=torch.int64, device=self.device)
        if n_ok and k:
            q_all = _to(xq, self.device)
            kc = min(n_ok, self.candidates(k))
            qb, _ = self._chunks(nq, 6 if self.half else 4, n)
            qb = max(1, min(qb, self.block_bytes // (4 * kc * self.d)))  # the gathered rows of the re-scoring
            for a in range(0, nq, qb):
                rows = torch.arange(a, min(nq, a + qb), device=self.device)
                c = kc
                while len(rows):
                    Sr, Pr, proven = self._knn_rows(xq, q_all, rows, k, c, m, n_ok)
                    w, done = Sr.shape[1], rows[proven]
                    S[done, :w], P[done, :w] = Sr[proven], Pr[proven]
                    rows, c = rows[~proven], min(n_ok, c * WIDEN)
        P.masked_fill_(S == -math.inf, -1)  # fewer than k allowed rows
        D = S.neg().clamp_min_(0).masked_fill_(P < 0, math.inf) if self.space == "l2" else S
        return D.cpu().numpy().astype(np.float32), P.cpu().numpy()

    def _knn_rows(self, xq, q_all, rows, k, kc, m, n_ok):
        """(S, P, proven): the best min(k, n) of the queries `rows` from their kc best fast candidates, re-scored
        exactly; `proven` says for which queries no row outside the candidates can reach the top k."""
        q = q_all[rows]
        qn = torch.linalg.vector_norm(q, dim=1)
        full = kc > n_ok // FULL_SCAN  # candidates would cost about as much as scoring every row in fp32
        if full:  # then the fp32 scores of every row pick them, as FAISS's IndexFlat ranks a batch
            kc = min(n_ok, self.candidates(k))
        F, C = self._fast_topk(q, qn, kc, m, fp32=full)
        Sx = self._exact(xq[rows.cpu().numpy()], q, C)
        Sk, j = Sx.topk(min(k, kc), dim=1)
        proven = Sk[:, -1] >= F[:, -1] + self._margin(qn) if not full else torch.ones_like(Sk[:, 0], dtype=bool)
        return Sk, C.gather(1, j), proven

    def candidates(self, k: int) -> int:
        """Rows re-scored exactly per query at first: `rerank` x k, and at least k + 16."""
        return max(self.rerank * k, k + 16)

    def _fast_topk(self, q, qn, kc, m, fp32: bool = False):
        """(nq, kc) best fast (or `fp32`) scores and their positions over all rows, block by block of vectors."""
        n = self._n
        _, vb = self._chunks(len(q), 6 if self.half else 4, n)
        F = torch.full((len(q), 0), -math.inf, device=self.device)
        C = torch.zeros((len(q), 0), dtype=torch.int64, device=self.device)
        for a in range(0, n, vb):
            b = min(n, a + vb)
            s = self._fast(q, qn, a, b, fp32)
            if m is not None:
                s.masked_fill_(~m[a:b], -math.inf)
            f, c = s.topk(min(kc, b - a), dim=1)
            F, C = torch.cat([F, f], 1), torch.cat([C, c + a], 1)
            if F.shape[1] > kc:
                F, j = F.topk(kc, dim=1)
                C = C.gather(1, j)
        return F, C.masked_fill_(F == -math.inf, -1)

    # ---- range -------------------------------------------------------------------------------------------
    def range_search(self, xq: np.ndarray, radius: float, params=None):
        """Every row within `radius` (l2: distance < radius; ip: product > radius) of each query, FAISS's
        (lims, D, P): query i's hits are D[lims[i]:lims[i+1]], unordered. Candidates are the rows whose fast score
        passes the radius widened by the error bound; each is re-scored exactly before it counts."""
        if params is not None:
            raise ValueError("TorchFlat takes no search parameters")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        n, nq = self._n, len(xq)
        r = -float(radius) if self.space == "l2" else float(radius)
        per_q: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(nq)]
        if n:
            q_all = _to(xq, self.device)
            qb, vb = self._chunks(nq, 6 if self.half else 4, n)
            for a in range(0, nq, qb):
                q = q_all[a:a + qb]
                qn = torch.linalg.vector_norm(q, dim=1)
                floor = r - self._margin(qn)
                for v in range(0, n, vb):
                    s = self._fast(q, qn, v, min(n, v + vb))
                    qi, pj = torch.nonzero(s > floor[:, None], as_tuple=True)
                    if not len(qi):
                        continue
                    pj = pj + v
                    ex = self._exact_pairs(xq[a:a + qb], q, qi, pj)
                    keep = ex > r
                    for i, p, e in self._split(qi[keep], pj[keep], ex[keep]):
                        per_q[a + i].append((p, e))
        return self._faiss_range_answer(per_q)

    def _exact_pairs(self, xq_block, q, qi, pj):
        """Exact scores of the (query, row) pairs qi, pj, in slices whose gathered rows fit block_bytes."""
        step = max(1, self.block_bytes // (4 * self.d))
        out = [self._exact(xq_block[qi[s:s + step].cpu().numpy()], q[qi[s:s + step]], pj[s:s + step, None])[:, 0]
               for s in range(0, len(qi), step)]
        return torch.cat(out)

    @staticmethod
    def _split(qi, pj, ex):
        """(query, positions, scores) per query present in qi (qi sorted, as torch.nonzero returns it)."""
        if not len(qi):
            return []
        uq, counts = torch.unique_consecutive(qi, return_counts=True)
        return zip(uq.tolist(), pj.split(counts.tolist()), ex.split(counts.tolist()))

    def _faiss_range_answer(self, per_q):
        lims = np.zeros(len(per_q) + 1, dtype=np.int64)
        Ps, Ds = [], []
        for i, hits in enumerate(per_q):
            for p, e in hits:
                Ps.append(p.cpu().numpy())
                Ds.append(e.cpu().numpy())
            lims[i + 1] = lims[i] + sum(len(p) for p, _ in hits)
        P = np.concatenate(Ps).astype(np.int64) if Ps else np.zeros(0, np.int64)
        D = np.concatenate(Ds).astype(np.float32) if Ds else np.zeros(0, np.float32)
        return lims, (-D if self.space == "l2" else D), P
