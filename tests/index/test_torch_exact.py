"""The torch exact-search back-end against FAISS exact search (IndexFlat through AnnIndex): same ids, distances
within 1e-4 relative, for l2, ip and cosine, fp32 / fp16 / bf16 storage, with filters, deletes, upserts, range
search and collections many blocks larger than the memory budget. Seeded continuous data, so no ties."""
import numpy as np
import pytest
import torch

from simdex.errors import InvalidArgument
from simdex.index import torch_ann
from simdex.index.ann import AnnIndex
from simdex.index.torch_ann import TorchAnnIndex, backend_name, make_index, resolve_backend
from simdex.index.torch_exact import FULL_SCAN, TorchFlat

D_, N, NQ, K = 24, 3000, 23, 10
BUDGET = 1 << 14  # 16 KiB of scores per block: 4096 fp32 scores, so 3,000 vectors x 23 queries take many blocks
STORAGES = ["float32", "float16", "bfloat16"]
METRICS = ["l2", "ip", "cosine"]


def data(seed=0, n=N, d=D_):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, d)).astype(np.float32)
    xb = (centres[rng.integers(0, 30, n)] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)
    xq = (centres[rng.integers(0, 30, NQ)] + 0.4 * rng.standard_normal((NQ, d))).astype(np.float32)
    return xb, xq


def pair(metric, storage, d=D_):
    """The same kind on both back-ends: FAISS (the oracle) and torch with a tiny block budget."""
    return (AnnIndex(d, metric, "Flat"),
            TorchAnnIndex(d, metric, "Flat", device="cpu", storage=storage, block_bytes=BUDGET))


def fill(indexes, xb, start=0):
    iids = np.arange(start, start + len(xb), dtype=np.int64)
    for ix in indexes:
        ix.add(iids, [f"v{i}" for i in iids.tolist()], xb)


def assert_same_knn(a, b, xq, k=K, allowed=None):
    Da, Pa = a.knn(xq, k, allowed=allowed)
    Db, Pb = b.knn(xq, k, allowed=allowed)
    np.testing.assert_array_equal(Pb, Pa)
    ok = Pa >= 0
    np.testing.assert_allclose(Db[ok], Da[ok], rtol=1e-4, atol=1e-6 * np.abs(Da[ok]).max())
    return Pa


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_knn_equals_faiss_exact(metric, storage):
    xb, xq = data()
    a, b = pair(metric, storage)
    fill((a, b), xb[:1000])
    fill((a, b), xb[1000:], start=1000)  # appended into the buffer that doubles
    assert b.on_torch and backend_name(b) == f"torch:cpu:{storage}"
    assert_same_knn(a, b, xq)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_deletes_upserts_and_filters_equal_faiss(metric, storage):
    xb, xq = data(1)
    a, b = pair(metric, storage)
    fill((a, b), xb)
    P = assert_same_knn(a, b, xq)
    gone = np.unique(P[:, :3])  # the best hits of every query are deleted ...
    for ix in (a, b):
        ix.remove(gone)
    assert_same_knn(a, b, xq)
    rng = np.random.default_rng(2)
    new = xq[np.arange(len(gone)) % NQ] + 0.01 * rng.standard_normal((len(gone), D_)).astype(np.float32)
    new_iids = np.arange(N, N + len(gone))
    for ix in (a, b):  # ... and upserted again under the same ids (new internal ids), near the queries
        ix.add(new_iids, [f"v{g}" for g in gone.tolist()], new)
    P2 = assert_same_knn(a, b, xq)
    assert (P2 >= N).any() and b.ext_ids(P2[P2 >= N]) == a.ext_ids(P2[P2 >= N])
    allowed = a.mask_of(np.flatnonzero(rng.random(N + len(gone)) < 0.3))  # a filter: 30% of the positions
    P3 = assert_same_knn(a, b, xq, allowed=allowed)
    assert allowed[P3].all()


@pytest.mark.parametrize("metric", METRICS)
def test_fewer_allowed_than_k_pads(metric):
    xb, xq = data(3)
    a, b = pair(metric, "float32")
    fill((a, b), xb)
    allowed = a.mask_of(np.array([5, 17, 400]))
    P = assert_same_knn(a, b, xq, allowed=allowed)
    assert (P[:, 3:] == -1).all() and set(P[:, :3].ravel()) == {5, 17, 400}


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", METRICS)
def test_range_equals_faiss_range(metric, storage):
    xb, xq = data(4)
    a, b = pair(metric, storage)
    fill((a, b), xb)
    for ix in (a, b):
        ix.remove(np.arange(0, N, 7))
    Dk, _ = a.knn(xq, 40)
    vals = np.sort(Dk.ravel())
    radius = float((vals[len(vals) // 2] + vals[len(vals) // 2 + 1]) / 2)  # between two scores: no tie on it
    allowed = a.mask_of(np.arange(0, N, 2))
    for mask in (None, allowed):
        ra, rb = a.range(xq, radius, allowed=mask), b.range(xq, radius, allowed=mask)
        assert sum(f for *_, f in ra) > NQ  # the radius holds hits
        for (da, pa, fa), (db, pb, fb) in zip(ra, rb):
            assert fa == fb
            np.testing.assert_array_equal(pb, pa)
            np.testing.assert_allclose(db, da, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("storage", STORAGES)
def test_blocks_stay_under_the_memory_budget(storage, monkeypatch):
    """A collection many blocks larger than the budget: every block of scores fits it, and the answer is exact."""
    xb, xq = data(5, n=6000)
    core = TorchFlat(D_, "l2", storage=storage, block_bytes=BUDGET)
    core.add(xb)
    sizes, fast = [], core._fast

    def spy(q, qn, a, b, fp32=False):
        sizes.append((len(q), b - a))
        return fast(q, qn, a, b, fp32)

    monkeypatch.setattr(core, "_fast", spy)
    _, P = core.search(xq, K)
    per_score = 4 if storage == "float32" else 6
    assert len(sizes) > 10 and max(v for _, v in sizes) < len(xb)  # many blocks, none the whole collection
    assert max(q * v * per_score for q, v in sizes) <= BUDGET
    ref = AnnIndex(D_, "l2", "Flat")
    fill((ref,), xb)
    np.testing.assert_array_equal(P, ref.knn(xq, K)[1])


def test_each_numeric_path_runs(monkeypatch):
    """Proven at the first candidates (fp32), widened (bf16 on near-ties), one fp32 scan (few rows): all exact."""
    rounds = []
    knn_rows = TorchFlat._knn_rows

    def spy(self, xq, q_all, rows, k, kc, m, n_ok):
        out = knn_rows(self, xq, q_all, rows, k, kc, m, n_ok)
        rounds.append((self.storage, kc, kc > n_ok // FULL_SCAN, int(out[2].sum()), len(rows)))
        return out

    monkeypatch.setattr(TorchFlat, "_knn_rows", spy)
    xb, xq = data(6)
    a, b = pair("l2", "float32")
    fill((a, b), xb)
    assert_same_knn(a, b, xq)
    assert all(not full and proven == n for _, _, full, proven, n in rounds)  # fp32: proven by its candidates
    rounds.clear()
    # bf16 over unit rows whose distances differ far less than bf16's rounding: the first candidates cannot
    # prove the top k (and, ranked by bf16 alone, would miss some of it)
    rng = np.random.default_rng(7)
    base = rng.standard_normal(D_).astype(np.float32)
    near = (base + 0.01 * rng.standard_normal((N, D_))).astype(np.float32)
    a, b = pair("cosine", "bfloat16")
    fill((a, b), near)
    assert_same_knn(a, b, base[None, :] + 0.01 * rng.standard_normal((3, D_)).astype(np.float32))
    assert len(rounds) >= 2 and rounds[0][3] < rounds[0][4]  # widened at least once
    rounds.clear()
    a, b = pair("cosine", "float16")
    fill((a, b), xb[:200])  # fewer rows than FULL_SCAN x candidates: one fp32 scan
    assert_same_knn(a, b, xq)
    assert rounds and all(full for _, _, full, _, _ in rounds)


def test_upserts_append_without_copying_per_upsert():
    core = TorchFlat(8, "ip")
    buffers = set()
    for i in range(5000):
        core.add(np.full((1, 8), i, dtype=np.float32))
        buffers.add(core._x.data_ptr())
    assert core.ntotal == 5000 and len(buffers) <= 4  # 1024 -> 2048 -> 4096 -> 8192
    np.testing.assert_array_equal(core.vectors()[4999], np.full(8, 4999, np.float32))


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_snapshots_restore_on_either_backend(storage):
    xb, xq = data(8)
    a, b = pair("cosine", storage)
    fill((a, b), xb)
    for ix in (a, b):
        ix.remove(np.arange(10))
    iids = np.arange(10, N)
    ext = [f"v{i}" for i in iids.tolist()]
    from_torch_to_faiss = AnnIndex(D_, "cosine", "Flat")
    assert len(from_torch_to_faiss.restore(b.snapshot(), iids, ext)) == 0
    from_faiss_to_torch = TorchAnnIndex(D_, "cosine", "Flat", storage=storage)
    assert len(from_faiss_to_torch.restore(a.snapshot(), iids, ext)) == 0
    assert from_faiss_to_torch.on_torch
    P = assert_same_knn(a, from_torch_to_faiss, xq)
    assert_same_knn(a, from_faiss_to_torch, xq)
    assert (P >= 10).all()


def test_untrained_kinds_search_on_torch_until_trained():
    xb, xq = data(9, n=3000, d=8)
    ix = make_index(8, "l2", "IVF16,Flat", "torch")
    assert ix.on_torch and not ix.trained and ix.min_train <= 3000
    fill((ix,), xb)
    ref = AnnIndex(8, "l2", "Flat")
    fill((ref,), xb)
    assert_same_knn(ref, ix, xq)
    trained = ix.fresh(xb)  # what Collection._rebuild does once enough vectors exist
    assert trained.trained and backend_name(trained) == "faiss" and not isinstance(trained, TorchAnnIndex)
    assert isinstance(ix.fresh(), TorchAnnIndex) and ix.fresh().on_torch
    assert not make_index(8, "l2", "HNSW16", "torch").on_torch  # graph kinds stay on FAISS


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("SIMDEX_SEARCH_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "faiss" and resolve_backend(None) == "faiss"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch_ann, "gpu_available", lambda: False)
    assert resolve_backend("auto") == "torch"  # CUDA torch, CPU-only faiss
    monkeypatch.setattr(torch_ann, "gpu_available", lambda: True)
    assert resolve_backend("auto") == "faiss"  # faiss-gpu does it
    monkeypatch.setenv("SIMDEX_SEARCH_BACKEND", "torch")
    assert resolve_backend(None) == "torch" and resolve_backend("faiss") == "faiss"
    with pytest.raises(InvalidArgument, match="'gpu' is not one of"):
        resolve_backend("gpu")
    monkeypatch.setenv("SIMDEX_TORCH_STORAGE", "int8")
    with pytest.raises(InvalidArgument, match="SIMDEX_TORCH_STORAGE='int8'"):
        torch_ann.torch_storage()
