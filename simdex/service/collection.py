"""A collection: the durable rows in the Store plus the derived AnnIndex, kept in step.

Writes are serialized per collection: commit to the database first (then the write is acknowledged
durable), then apply to the in-memory index. The index is snapshotted to a file with the sequence number
it covers and, at start, restored and caught up from the database (or rebuilt from it).
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simdex import trace
from simdex.defaults import REMOVALS_KEPT_WRITES
from simdex.distances import BIGGER_IS_BETTER
from simdex.index.ann import AnnIndex
from simdex.index.backend import NCPU, SMALL_BATCH, faiss
from simdex.index.batcher import SearchBatcher
from simdex.index.torch_ann import backend_name, make_index
from simdex.limits import Limits
from simdex.store import filters
from simdex.store.items import CollectionRecord, Store, WriteResult
from simdex.types import SearchParams

LOG = logging.getLogger(__name__)
# Filters matching at most this many items are answered exactly from the stored vectors (read from the database,
# so the cap shrinks with the dimension: at most ~16 MB of float32 per search).
EXACT_SUBSET = 4096
EXACT_SUBSET_FLOATS = 1 << 22
TRAIN_SAMPLE = 100_000    # vectors sampled to train a kind that needs training
# The answers of this many distinct filters (and at most these bytes of them) are kept until the next write.
FILTER_CACHE = 32
FILTER_CACHE_BYTES = 64 << 20
CATCH_UP_FLOATS = 1 << 22  # a replica's catch-up step: whole writes of at most ~16 MB of float32 (one write at least)
RANGE_SLICE = 256         # queries per FAISS range call at most (fewer on big collections: see _range)

# The caller's veto on a commit (the server installs one per call with commit_guard): a factory of context
# managers, entered under the collection's write lock right before the commit and spanning it, that raises instead
# when the call may no longer commit (cancelled, past its deadline, the server past its stop's grace period).
_COMMIT_GUARD: ContextVar = ContextVar("simdex_commit_guard", default=None)


@contextmanager
def commit_guard(window):
    """Every write this thread makes inside the block commits only within `window()` (see _COMMIT_GUARD)."""
    token = _COMMIT_GUARD.set(window)
    try:
        yield
    finally:
        _COMMIT_GUARD.reset(token)


def _commit_window():
    window = _COMMIT_GUARD.get()
    return nullcontext() if window is None else window()


@dataclass
class Hits:
    """One query's answer: external ids best first and their scores in the collection's metric."""
    ids: list[str]
    distances: np.ndarray          # (len(ids),) float32
    iids: np.ndarray               # (len(ids),) int64 internal ids
    next_page_token: str = ""      # range searches: continues this query's hits ("" on the last page)


class Collection:
    """One open collection: its database record, its AnnIndex and the lock that orders its writes."""

    def __init__(self, info: CollectionRecord, store: Store, snapshot_dir: Path, search_backend: str = "faiss"):
        """`search_backend`: "faiss" or "torch" (resolved by index.torch_ann.resolve_backend)."""
        self.info, self.store = info, store
        self.path = snapshot_dir / f"{info.id}.npz"
        self.ann = make_index(info.dim, info.metric, info.index, search_backend)
        self.seq = info.seq
        self.snap_seq = -1
        self._reconciled = 0  # the index holds no id removed at or before this removed-items horizon (see _step)
        self._pruned_upto = 0  # the removed-items log holds nothing at or below this seq (prune_removals)
        self.write_lock = threading.Lock()
        self._filter_cache: dict = {}  # filter -> (seq, ann, match, allowed, n_allowed): see _filtered
        self._filter_lock = threading.Lock()
        self.batcher = SearchBatcher(self._knn_unfiltered, slots=NCPU)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def search_backend(self) -> str:
        """What answers this collection's searches now ("torch:cpu:float32", "faiss", ...)."""
        return backend_name(self.ann)

    # ---- start-up ----------------------------------------------------------------------------------------
    def open(self) -> None:
        """Restore the snapshot and catch up from the database, or rebuild from the database."""
        with self.write_lock:
            live_iids, live_ext = self.store.live(self.info.id)
            if self.path.exists():
                try:
                    with np.load(self.path, allow_pickle=False) as arrays:
                        snap_seq = int(arrays["seq"])
                        missing = self.ann.restore(arrays, live_iids, live_ext)
                    ext_of = dict(zip(live_iids.tolist(), live_ext))
                    if len(missing):
                        found, x = self.store.vectors(self.info.id, self.info.dim, missing)
                        self.ann.add(missing[found], [ext_of[i] for i in missing[found].tolist()], x)
                    LOG.info("collection %s: snapshot at seq %d caught up to %d (+%d items)",
                             self.name, snap_seq, self.seq, len(missing))
                    self.snap_seq = snap_seq if snap_seq == self.seq and not len(missing) else -1
                    self._maintain()
                    return
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    LOG.warning("collection %s: snapshot unusable (%s); rebuilding from the database", self.name, exc)
            self._rebuild(live_iids, live_ext)

    def _rebuild(self, live_iids: np.ndarray | None = None, live_ext: list[str] | None = None) -> None:
        """Build a fresh index from every stored vector (training it when the kind needs it and can)."""
        if live_iids is None:
            live_iids, live_ext = self.store.live(self.info.id)
        sample = None
        if self.ann.min_train and len(live_iids) >= self.ann.min_train:  # a trainable kind with enough rows (re)trains
            rng = np.random.default_rng(self.info.id)
            pick = np.sort(rng.choice(live_iids, size=min(len(live_iids), TRAIN_SAMPLE), replace=False))
            _, sample = self.store.vectors(self.info.id, self.info.dim, pick)
            LOG.info("collection %s: training %s on %d vectors", self.name, self.info.index, len(pick))
        new = self.ann.fresh(sample)
        ext_of = dict(zip(live_iids.tolist(), live_ext))
        for iids, x in self.store.iter_vectors(self.info.id, self.info.dim):
            # rows another server on the database wrote since the listing wait for catch_up, which adds them
            listed = np.fromiter((i in ext_of for i in iids.tolist()), dtype=bool, count=len(iids))
            new.add(iids[listed], [ext_of[i] for i in iids[listed].tolist()], x[listed])
        self.ann = new
        self.snap_seq = -1

    def _maintain(self) -> None:
        if self.ann.ready_to_train() or self.ann.needs_compaction():
            self._rebuild()

    # ---- writes (called with validated input) ------------------------------------------------------------
    def upsert(self, ids: list[str], xb: np.ndarray, metadata: list[dict], hashes: list[str],
               fingerprint: str = "") -> WriteResult:
        with self.write_lock, _commit_window():
            res = self.store.upsert(self.info, ids, xb, metadata, hashes, fingerprint)
            self.ann.remove(res.removed_iids)
            self.ann.add(res.added_iids, list(ids), xb)
            self._advance(res)
            self._maintain()
        return res

    def delete(self, ids: list[str], ignore_missing: bool) -> WriteResult:
        with self.write_lock, _commit_window():
            res = self.store.delete(self.info, ids, ignore_missing)
            self.ann.remove(res.removed_iids)
            self._advance(res)
            self._maintain()
        return res

    # ---- following the other servers on the database (service/replication.py) -----------------------------
    def catch_up(self) -> bool:
        """Apply what other servers on the database committed after self.seq, in steps of whole writes of at most
        CATCH_UP_FLOATS floats, each under the write lock (a search waits for one step's index change at most, a
        write of this server for one step). False once the collection no longer exists in the database."""
        while True:
            with self.write_lock:
                progress = self._step()
            if not progress:
                return progress is not None

    def _step(self) -> bool | None:
        """One step of catch_up (the caller holds the write lock): whether the index moved on, None when the
        collection was deleted. Rows the index already holds (read past self.seq when it was opened or rebuilt)
        are not added twice; removals come first, so the ids the new seq no longer has are gone before it shows."""
        ch = self.store.changes(self.info.id, self.info.dim, self.seq, max(1, CATCH_UP_FLOATS // self.info.dim),
                                self._reconciled)
        if ch is None or ch.seq <= self.seq:
            return None if ch is None else False
        removed = ch.removed
        if ch.live is not None:  # the removed-items log was pruned past self.seq: whatever is not live went
            gone = np.setdiff1d(self.ann.live_iids(), ch.live)
            LOG.info("collection %s: at seq %d, behind the pruned removals; %d removals found against the live rows",
                     self.name, self.seq, len(gone))
            removed = np.union1d(removed, gone)
            self._reconciled = ch.horizon  # every id removed up to it is gone now: later steps need no listing
        self.ann.remove(removed)
        new = ~np.isin(ch.added, self.ann.iids_at(self.ann.positions(ch.added)))
        self.ann.add(ch.added[new], [e for e, n in zip(ch.ext_ids, new) if n], ch.vectors[new])
        self.seq = ch.seq
        self._maintain()
        return True

    def _advance(self, res: WriteResult) -> None:
        """Move self.seq to this write's, after the writes other servers committed before it (res.base is past
        self.seq): those are applied first, or the index would claim a state it lacks. On a database's only
        server res.base == self.seq always."""
        while self.seq < res.base and self._step():
            pass
        self.seq = max(self.seq, res.seq)

    def listing(self, spec: filters.Filter = ()) -> tuple[int, np.ndarray, list[str]]:
        """(seq, (n,) int64 internal ids, external ids) of the live items matching `spec`, read at one seq."""
        with self.write_lock:  # the rows and the sequence number they are at agree
            seq = self.seq
            iids, ext = self.store.live(self.info.id)
        if spec:
            keep = np.isin(iids, self.store.filter_iids(self.info.id, spec))
            iids, ext = iids[keep], [e for e, k in zip(ext, keep) if k]
        return seq, iids, ext

    # ---- search ------------------------------------------------------------------------------------------
    @staticmethod
    def _knn_unfiltered(xq, k, key):
        ann, params = key  # the caller's index: ids must be read from the index that was searched
        return ann.knn(xq, k, params)

    def _filtered(self, ann: AnnIndex, spec: filters.Filter) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(internal ids matching `spec`, their mask over `ann`'s positions or None when few enough to be searched
        exactly, how many the mask holds). The filter's SQL scans the collection's rows (tens of ms at 100k), so
        the answer is kept while the collection's sequence number and index are the ones it was read at: a write
        changes the sequence number before it is acknowledged, and no later search uses the old answer."""
        seq = self.seq  # read before the SQL: an answer newer than its seq is only ever discarded early
        key = filters.cache_key(spec)
        hit = self._filter_cache.get(key)
        if hit is not None and hit[0] == seq and hit[1] is ann:
            return hit[2:]
        match = self.store.filter_iids(self.info.id, spec)
        allowed = None
        if len(match) > min(EXACT_SUBSET, max(64, EXACT_SUBSET_FLOATS // self.info.dim)):
            allowed = ann.mask_of(match)
        entry = (seq, ann, match, allowed, int(allowed.sum()) if allowed is not None else len(match))
        with self._filter_lock:
            cache = {f: e for f, e in self._filter_cache.items() if e[0] == seq and e[1] is ann}
            size = sum(e[2].nbytes + (e[3].nbytes if e[3] is not None else 0) for e in cache.values())
            if len(cache) >= FILTER_CACHE or size > FILTER_CACHE_BYTES:
                cache.clear()
            cache[key] = entry
            self._filter_cache = cache
        return entry[2:]

    @staticmethod
    def _hits(ann: AnnIndex, D: np.ndarray, P: np.ndarray) -> list[Hits]:
        """(nq, k) scores and positions -> one Hits per query: ids and internal ids in one numpy step for all
        queries when every query has k hits (the common case), row by row only when some have fewer (-1)."""
        if P.size and P.min() >= 0:
            return [Hits(ids, d, i) for ids, d, i in zip(ann.ext_ids(P), D, ann.iids_at(P))]
        out = []
        for d, p in zip(D, P):
            ok = p >= 0
            p = p[ok]
            out.append(Hits(ann.ext_ids(p), d[ok], ann.iids_at(p)))
        return out

    def _exact(self, ann: AnnIndex, xq: np.ndarray, iids: np.ndarray, k: int | None, radius: float | None,
               keep: int | None = None, count: "_HitCount | None" = None) -> list[Hits]:
        """Exact answer over the items `iids` from their stored vectors: each query's best k, or its range hits
        (the best `keep`, every one found counted by `count`). Vectors are read EXACT_SUBSET_FLOATS floats at a
        time and scored in slices of queries of as many scores, so memory stays bounded whatever `iids` holds."""
        bigger = BIGGER_IS_BETTER[self.info.metric]
        want = k if radius is None else keep
        if self.info.metric == "cosine":
            xq = xq.copy()
            faiss.normalize_L2(xq)
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64))] * len(xq)
        every = ann.positions(iids)  # only what the index already holds, so ids and index agree
        step = max(1, EXACT_SUBSET_FLOATS // self.info.dim)
        for c in range(0, len(every), step):
            pos = every[c:c + step]
            xb = ann.stored_vectors(pos)
            if xb is None:  # the index keeps no exact copy: the stored vectors, of the items still in the database
                found, xb = self.store.vectors(self.info.id, self.info.dim, ann.iids_at(pos))
                pos = pos[found]
            if self.info.metric == "cosine":
                faiss.normalize_L2(xb)  # in place: both sources return fresh copies of their own
            per = max(1, EXACT_SUBSET_FLOATS // max(1, len(xb)))
            for a in range(0, len(xq), per):
                for q, s in enumerate(self._exact_scores(xq[a:a + per], xb), start=a):
                    p = pos
                    if radius is not None:
                        within = np.flatnonzero((s > radius) if bigger else (s < radius))
                        count.add(len(within))
                        s, p = s[within], pos[within]
                    d = np.concatenate([best[q][0], s])
                    p = np.concatenate([best[q][1], p])
                    order = AnnIndex.best_first(d, bigger, want)  # earlier chunks first among ties
                    best[q] = (d[order], p[order])
        return [Hits(ann.ext_ids(p.tolist()), d, ann.iids_at(p)) for d, p in best]

    def _exact_scores(self, xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
        """(nq, m) float32 scores in the collection's metric of (nq, d) queries against (m, d) stored vectors."""
        if not len(xb):
            return np.zeros((len(xq), 0), dtype=np.float32)
        if self.info.metric == "l2":
            return faiss.pairwise_distances(xq, xb).astype(np.float32)  # squared L2, as FAISS reports it
        # ip; and cosine over the unit vectors: the cosine itself, which the index reports as 1 - d/2
        return (xq @ xb.T).astype(np.float32)

    def _range(self, ann: AnnIndex, xq: np.ndarray, radius: float, params: SearchParams,
               allowed: np.ndarray | None, keep: int | None, count: "_HitCount") -> list[Hits]:
        """Range hits through the index, in slices of queries whose FAISS answer (up to ntotal hits per query)
        stays near the hit budget; the running count refuses as soon as it passes it."""
        per = max(1, min(RANGE_SLICE, count.limit // max(1, ann.ntotal)))
        out = []
        for a in range(0, len(xq), per):
            for d, p, found in ann.range(xq[a:a + per], radius, params, allowed, keep):
                count.add(found)
                out.append(Hits(ann.ext_ids(p.tolist()), d, ann.iids_at(p)))
        return out

    def search(self, xq: np.ndarray, k: int, params: SearchParams, spec: filters.Filter,
               radius: float | None = None, *, keep: int | None = None, limits: Limits = Limits()) -> list[Hits]:
        """k-NN (or range when radius is given) for (nq, d) float32 queries, restricted to the filter.

        Range answers hold each query's best `keep` hits (all when None); every hit found counts against
        `limits.max_search_results` (ResourceExhausted as soon as the running total passes it). The k-NN budget
        (nq x k) is the caller's to check before it calls (Search.search)."""
        ann = self.ann
        count = _HitCount(limits, len(xq), radius) if radius is not None else None
        allowed = None
        if spec:
            match, allowed, n_allowed = self._filtered(ann, spec)
            if trace.ON:
                trace.mark("filter")
            if allowed is None:
                return self._exact(ann, xq, match, k, radius, keep, count)
        if radius is not None:
            return self._range(ann, xq, radius, params, allowed, keep, count)
        if allowed is None and len(xq) < SMALL_BATCH and ann.stacks:
            D, P = self.batcher.search(xq, k, (ann, params))
            if trace.ON:
                trace.mark("batch wait")
        else:
            D, P = ann.knn(xq, k, params, allowed)
        hits = self._hits(ann, D, P)
        if trace.ON:
            trace.mark("id mapping")
        if allowed is not None:
            want = min(k, n_allowed)
            if any(len(h.ids) < want for h in hits):  # a graph kind ran out of reachable matches
                return self._exact(ann, xq, match, k, None)
        return hits

    # ---- persistence -------------------------------------------------------------------------------------
    def prune_removals(self, keep: int | None = None) -> int:
        """Forget the logged removals of the writes more than `keep` (default REMOVALS_KEPT_WRITES) writes behind
        this index; how many rows went."""
        upto = self.seq - (REMOVALS_KEPT_WRITES if keep is None else keep)
        if upto <= self._pruned_upto:  # nothing at or below it is left, and no write logs one there any more
            return 0
        gone = self.store.prune_removals(self.info.id, upto)
        if not gone:  # (a pass that deleted rows may have stopped at its chunk budget: the next one looks again)
            self._pruned_upto = upto
        return gone

    def save_snapshot(self) -> bool:
        """Write the index to its file (atomically) if it changed since the last snapshot."""
        with self.write_lock:
            if self.snap_seq == self.seq:
                return False
            arrays, seq = self.ann.snapshot(), self.seq
        tmp = self.path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as fh:
            np.savez(fh, seq=np.array(seq), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.snap_seq = seq
        return True

    def close(self, remove_snapshot: bool = False) -> None:
        """Nothing runs on its own (the batcher has no thread); a deleted collection also drops its snapshot."""
        if remove_snapshot:
            self.path.unlink(missing_ok=True)


class _HitCount:
    """The running total of the range hits one Search has found, refused once it passes the budget."""

    def __init__(self, limits: Limits, nq: int, radius: float):
        self.limits, self.limit, self.nq, self.radius = limits, limits.max_search_results, nq, radius
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise self.limits.refuse("max_search_results", f"at least {self.total} hits",
                                     f"range search of {self.nq} queries within radius {self.radius:g}")
