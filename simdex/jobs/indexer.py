"""The batch indexing job behind `simdex index`: files (or rows of vectors) -> embeddings -> upserts, resumable.

Pipeline for files, in local-embed mode: the main thread plans (reads and hashes files in blocks, asks the
collection which ids already hold the same content hash, and skips those), torch DataLoader workers read, decode
and preprocess the rest in parallel, the main thread runs the model, and one uploader thread upserts the vectors
in chunks (each chunk one acknowledged transaction), so the model never waits for the database. In remote-embed
mode the planned bytes go to the server as they are (`upsert(images=...)`), several chunks in flight.

Interrupting at any point loses at most the chunks not yet acknowledged; the next run skips what is stored with the
same content hash (sha256 of the file bytes, '#frame' appended for the frames of a multi-frame DICOM) and sends
the rest. Bad files never stop a run: each is reported (callback + a JSON-lines error report rewritten per run) and,
being unstored, tried again by the next run."""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from simdex.jobs import sources as src
from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simdex.wire import canonical_json, content_hash

LOG = logging.getLogger(__name__)

PLAN_BLOCK = 512               # files read, hashed and looked up per round trip
CHUNK_BYTES = 64 * 1024 ** 2   # raw bytes per remote-embed chunk, whatever --chunk-size says
_ITEM_LABEL = re.compile(r"^images\[\d+\] \(id .*?\): ")


def default_workers() -> int:
    """Decoding workers: one core is left to the model (and to the main thread that plans and feeds it)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class IndexOptions:
    collection: str
    embedder: str | None = None      # needed to create the collection; checked against an existing one
    remote_embed: bool | None = None  # None: the faster mode for the transport (see default_remote_embed)
    weights: str | None = None       # local-embed: weights file of the embedder (default: the torch hub cache)
    device: str | None = None        # local-embed: cpu | cuda (default: the GPU when present)
    workers: int = -1                # decoding processes (-1: default_workers(); 0: decode in the main process)
    batch_size: int = 32             # images per forward
    chunk_size: int = 256            # items per upsert transaction
    inflight: int = 2                # remote-embed: concurrent upsert calls
    all_frames: bool = False         # multi-frame DICOM: every frame (ids 'path#frame'), not the middle one
    metric: str = "cosine"
    index: str = "Flat"
    ids_file: str | None = None      # .npy source: one id per row
    vector_column: str = "vector"    # Parquet source
    id_column: str = "id"
    errors_file: str | None = None   # default: <collection>.index-errors.jsonl in the current folder
    progress: bool = True


@dataclass
class Summary:
    collection: str
    source: str
    mode: str              # local-embed | remote-embed | vectors
    inputs: int = 0        # files (or rows) in the source
    indexed: int = 0       # items stored by this run
    skipped: int = 0       # items already stored with the same content
    failed: int = 0        # inputs that could not be stored (see errors_file)
    seconds: float = 0.0
    model_seconds: float = 0.0   # local-embed: time spent in the model's forward
    errors_file: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def default_remote_embed(in_process: bool, cuda: bool) -> bool:
    """Which mode `simdex index` takes unless told. Measured with bench/embed.py --modes on the 2-core CPU host,
    against `--data` and against a `simdex serve` process: remote-embed was as fast or faster in every pairing (the
    model is the bottleneck there, and a decoding process beside the model's two threads slows the model more than
    the service's own decoding between forwards does). With a GPU in this process (in-process only) the model outruns
    one decoding thread, so local-embed's parallel DataLoader workers feed it instead."""
    return not (in_process and cuda)


class ErrorReport:
    """Failed inputs as JSON lines {"id", "path", "reason"}, flushed as they happen (a killed run keeps its
    report). Truncated at the start of each run; removed at the end when the run had no failures."""

    def __init__(self, path: Path, on_error: Callable[[dict], None]):
        self.path, self.on_error, self.count = path, on_error, 0
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def add(self, id_: str, path: str, reason: str) -> None:
        row = {"id": id_, "path": path, "reason": reason}
        with self._lock:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()
            self.count += 1
        self.on_error(row)

    def close(self) -> None:
        self._fh.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)


class Uploader:
    """Upserts chunks in `n` background threads (bounded queue: the producer waits when they fall behind).
    The first error stops the run: it is raised from the next put() or from close()."""

    def __init__(self, send: Callable[[tuple], None], n: int = 1):
        self._send, self._q = send, queue.Queue(maxsize=max(1, n))
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._loop, name=f"simdex-upload-{i}", daemon=True)
                         for i in range(max(1, n))]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while (chunk := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._send(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    self._error = e

    def put(self, chunk: tuple) -> None:
        self._raise()
        self._q.put(chunk)

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class Indexer:
    """Index one source into one collection through `client` (a Client or Client.local)."""

    def __init__(self, client, opts: IndexOptions, *, in_process: bool = False,
                 on_error: Callable[[dict], None] | None = None, embedder=None):
        """`in_process`: `client` is a Client.local (decides the default mode); `on_error(row)` hears of each failed
        input ({"id", "path", "reason"}); `embedder`: an already loaded embedder for local embedding."""
        self.c, self.o, self.in_process, self._emb = client, opts, in_process, embedder
        self.on_error = on_error or (lambda row: LOG.warning("%s: %s", row["path"] or row["id"], row["reason"]))
        if opts.chunk_size < 1 or opts.batch_size < 1:
            raise InvalidArgument(f"chunk_size {opts.chunk_size} and batch_size {opts.batch_size} must be >= 1")
        self.s: Summary | None = None
        self._bar = None
        self._lock = threading.Lock()

    # ---- entry ---------------------------------------------------------------------------------------------
    def run(self, source: str | os.PathLike) -> Summary:
        t0 = time.perf_counter()
        path = Path(source)
        o = self.o
        found = src.open_source(path, Path(o.ids_file) if o.ids_file else None, o.vector_column, o.id_column)
        errors = Path(o.errors_file or f"{o.collection}.index-errors.jsonl")
        self.report = ErrorReport(errors, self.on_error)
        try:
            if isinstance(found, src.VectorSource):
                self.s = Summary(o.collection, str(path), "vectors", found.n, errors_file=str(errors))
                self._vectors(found)
            else:
                remote = self._mode()
                self.s = Summary(o.collection, str(path), "remote-embed" if remote else "local-embed", len(found),
                                 errors_file=str(errors))
                (self._remote if remote else self._local)(found)
        finally:
            self.report.close()
            if self._bar is not None:
                self._bar.close()
        self.s.failed = self.report.count
        self.s.seconds = time.perf_counter() - t0
        return self.s

    def _mode(self) -> bool:
        if self.o.remote_embed is not None:
            return self.o.remote_embed
        cuda = False
        if self.in_process:
            from simdex.embedder.base import pick_device  # noqa: PLC0415

            pool = getattr(getattr(self.c, "service", None), "embedders", None)
            cuda = pick_device(self.o.device or getattr(pool, "device", None)).type == "cuda"
        return default_remote_embed(self.in_process, cuda)

    # ---- collection ----------------------------------------------------------------------------------------
    def _collection(self, dim: int = 0):
        """The target collection, created when missing (dim from the embedder for files, from the data for
        vectors). An existing one must match the embedder (files) or be a plain-vector collection (vectors)."""
        o = self.o
        try:
            info = self.c.get_collection(o.collection)
        except NotFound:
            if not dim and not o.embedder:
                raise InvalidArgument(f"collection {o.collection!r} does not exist: give --embedder to create "
                                      "it") from None
            try:
                info = self.c.create_collection(o.collection, dim, o.metric, o.index,
                                                embedder="" if dim else o.embedder)
                LOG.info("created collection %s (dim %d, %s, %s, embedder %r)", info.name, info.dim, info.metric,
                         info.index, info.embedder)
            except AlreadyExists:  # another job created it meanwhile
                info = self.c.get_collection(o.collection)
        if dim and info.embedder:
            raise FailedPrecondition(f"collection {o.collection!r} is filled by embedder {info.embedder!r}; a "
                                     "vector file can only fill a plain-vector collection")
        if not dim and not info.embedder:
            raise FailedPrecondition(f"collection {o.collection!r} stores plain vectors (no embedder); images "
                                     "need a collection created with an embedder")
        if not dim and o.embedder and info.embedder != o.embedder:
            raise InvalidArgument(f"collection {o.collection!r} is filled by embedder {info.embedder!r}, not "
                                  f"{o.embedder!r}")
        if dim and info.dim != dim:
            raise InvalidArgument(f"collection {o.collection!r} has dim {info.dim}; the vectors have dim {dim}")
        return info

    def _stored(self, ids: list[str]) -> dict[str, str]:
        """id -> content hash of the ids already stored."""
        if not ids:
            return {}
        return {it.id: it.content_hash
                for it in self.c.get(self.o.collection, ids, with_vectors=False, ignore_missing=True)}

    # ---- progress ------------------------------------------------------------------------------------------
    def _progress(self, total: int, unit: str) -> None:
        if not self.o.progress:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415
        except ImportError:
            return
        import sys  # noqa: PLC0415

        self._bar = tqdm(total=total, unit=unit, desc=f"index {self.o.collection}", file=sys.stderr,
                         dynamic_ncols=True, smoothing=0.1)

    def _advance(self, inputs: int, indexed: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self.s.indexed += indexed
            self.s.skipped += skipped
            if self._bar is not None:
                self._bar.update(inputs)
                self._bar.set_postfix(indexed=self.s.indexed, skipped=self.s.skipped, failed=self.report.count,
                                      refresh=False)

    def _fail(self, id_: str, path: str, reason: str) -> None:
        self.report.add(id_, path, reason)
        self._advance(1)

    # ---- planning: which files still need indexing ---------------------------------------------------------
    def _todo(self, items: list[src.FileItem], keep_bytes: bool) -> Iterator[src.Planned]:
        """Files not yet stored with the same content, in source order. Unreadable files are reported here."""
        with ThreadPoolExecutor(2, thread_name_prefix="simdex-hash") as pool:
            for a in range(0, len(items), PLAN_BLOCK):
                block = list(pool.map(lambda i: self._plan_one(i, items[i], keep_bytes),
                                      range(a, min(len(items), a + PLAN_BLOCK))))
                ok = [p for p in block if p is not None]
                stored = self._stored([i for p in ok for i in p.ids])
                for p in ok:
                    if all(stored.get(i) == h for i, h in zip(p.ids, p.hashes)):
                        self._advance(1, skipped=len(p.ids))
                    else:
                        yield p

    def _plan_one(self, i: int, item: src.FileItem, keep_bytes: bool) -> src.Planned | None:
        try:
            return src.plan_file(i, item, self.o.all_frames, keep_bytes)
        except OSError as e:
            self._fail(item.id, str(item.path), f"cannot read: {e.strerror or e}")
            return None

    # ---- local embedding: DataLoader workers -> model -> uploader ------------------------------------------
    def _embedder(self, name: str):
        if self._emb is not None:
            if self._emb.name != name:
                raise InvalidArgument(f"collection {self.o.collection!r} is filled by {name!r}, the embedder given "
                                      f"is {self._emb.name!r}")
            return self._emb
        pool = getattr(getattr(self.c, "service", None), "embedders", None)
        if pool is not None:  # in-process: the service's own embedder (its weights and device), loaded once
            return pool.get(name)
        from simdex.embedder import registry  # noqa: PLC0415

        return registry.load(name, self.o.weights, self.o.device)

    def _local(self, items: list[src.FileItem]) -> None:
        from torch.utils.data import DataLoader  # noqa: PLC0415

        info = self._collection()
        emb = self._embedder(info.embedder)
        if info.embedder_fingerprint and info.embedder_fingerprint != emb.fingerprint:
            raise FailedPrecondition(
                f"collection {info.name!r} holds vectors of {info.embedder} weights {info.embedder_fingerprint}; "
                f"the local weights are {emb.fingerprint}: give --weights with the collection's weights, or "
                "--remote-embed")
        o = self.o
        workers = default_workers() if o.workers < 0 else o.workers
        self._progress(len(items), "file")
        todo = src.TodoBatches(self._todo(items, keep_bytes=False), o.batch_size)
        loader = DataLoader(
            src.FileDataset(items, emb.preprocess, o.all_frames), batch_sampler=todo, num_workers=workers,
            collate_fn=src.collate, pin_memory=emb.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            # fork: workers inherit the embedder's preprocessing (closures do not pickle) and start in milliseconds
            multiprocessing_context="fork" if workers else None)
        batches = iter(loader)  # forks the workers before the uploader thread exists
        up = Uploader(lambda ch: self._send_vectors(ch, emb.fingerprint), 1)
        rows = src.Rows()
        try:
            for b in batches:
                for f in b.failed:
                    self._fail(f.id, f.path, f.reason)
                if b.x is not None:
                    rows.add(b.ids, self._forward(emb, b.x), b.metadata, b.hashes, b.ends)
                while len(rows) >= o.chunk_size:
                    up.put(rows.take(o.chunk_size))
            if len(rows):
                up.put(rows.take(len(rows)))
        finally:
            up.close()

    def _forward(self, emb, x) -> np.ndarray:
        """(M, 3, h, w) -> (M, dim) float32 in slices of batch_size; the time counts as model time."""
        t = time.perf_counter()
        bs = self.o.batch_size
        y = np.concatenate([emb.forward(x[s:s + bs]) for s in range(0, len(x), bs)])
        self.s.model_seconds += time.perf_counter() - t
        return y

    def _send_vectors(self, chunk: tuple, fingerprint: str) -> None:
        ids, x, metas, hashes, files = chunk
        self.c.upsert(self.o.collection, ids, x, metas, hashes, embedder_fingerprint=fingerprint)
        self._advance(files, indexed=len(ids))

    # ---- remote embedding: bytes -> server -----------------------------------------------------------------
    def _remote(self, items: list[src.FileItem]) -> None:
        info = self._collection()
        self._progress(len(items), "file")
        up = Uploader(self._send_files, self.o.inflight)
        chunk, size = [], 0
        try:
            for p in self._todo(items, keep_bytes=True):
                chunk.append(p)
                size += len(p.data)
                if len(chunk) >= self.o.chunk_size or size >= CHUNK_BYTES:
                    up.put((info.embedder, chunk))
                    chunk, size = [], 0
            if chunk:
                up.put((info.embedder, chunk))
        finally:
            up.close()

    def _send_files(self, work: tuple) -> None:
        embedder, files = work
        single = [p for p in files if len(p.ids) == 1]
        for p in files:
            if len(p.ids) > 1:
                self._send_frames(embedder, p)
        if single:
            self._send_raw(single)

    def _send_raw(self, files: list[src.Planned]) -> None:
        """One transaction; when the server rejects an input, halve until the bad files are alone (decoding
        comes before embedding on the server, so a rejected half costs little)."""
        metas = [src.item_metadata(p.item.path, {}, p.n_frames // 2 if p.dicom else None) for p in files]
        try:
            self.c.upsert(self.o.collection, [p.ids[0] for p in files], metadata=metas,
                          content_hashes=[p.hashes[0] for p in files], images=[p.data for p in files])
        except (InvalidArgument, FailedPrecondition) as e:
            if not _per_item(e):
                raise
            if len(files) == 1:
                self._fail(files[0].item.id, str(files[0].item.path), _ITEM_LABEL.sub("", e.message, count=1))
                return
            half = len(files) // 2
            self._send_raw(files[:half])
            self._send_raw(files[half:])
            return
        self._advance(len(files), indexed=len(files))

    def _send_frames(self, embedder: str, p: src.Planned) -> None:
        """Every frame of a multi-frame DICOM: embedded by the server, stored as one transaction."""
        try:
            e = self.c.embed_items(embedder, images=[p.data], all_frames=True)
        except (InvalidArgument, FailedPrecondition) as err:
            if not _per_item(err):
                raise
            self._fail(p.item.id, str(p.item.path), _ITEM_LABEL.sub("", err.message, count=1))
            return
        ids = src.frame_ids(p.item.id, len(e.vectors), True)
        hashes = src.frame_hashes(p.hashes[0].split("#")[0], len(ids))
        metas = [src.item_metadata(p.item.path, e.metadata[r], int(e.frame_index[r])) for r in range(len(ids))]
        self.c.upsert(self.o.collection, ids, e.vectors, metas, hashes, embedder_fingerprint=e.fingerprint)
        self._advance(1, indexed=len(ids))

    # ---- vectors: .npy / Parquet ---------------------------------------------------------------------------
    def _vectors(self, vs: src.VectorSource) -> None:
        if vs.n == 0:
            raise InvalidArgument(f"source {self.s.source!r} holds no rows")
        self._collection(vs.dim)
        self._progress(vs.n, "row")
        up = Uploader(lambda ch: self._send_vectors(ch, ""), 1)
        try:
            for blk in vs.blocks(self.o.chunk_size):
                good = np.isfinite(blk.x).all(axis=1)
                for i in np.flatnonzero(~good):
                    self._fail(blk.ids[i], "", f"row {blk.ids[i]!r}: missing vector, wrong length, NaN or infinity")
                keep = np.flatnonzero(good)
                ids = [blk.ids[i] for i in keep]
                metas = [blk.metadata[i] for i in keep]
                x = blk.x[keep]
                hashes = [content_hash(x[j].tobytes(), canonical_json(metas[j])) for j in range(len(ids))]
                stored = self._stored(ids)
                todo = [j for j in range(len(ids)) if stored.get(ids[j]) != hashes[j]]
                self._advance(len(ids) - len(todo), skipped=len(ids) - len(todo))
                if todo:
                    up.put(([ids[j] for j in todo], x[todo], [metas[j] for j in todo], [hashes[j] for j in todo],
                            len(todo)))
        finally:
            up.close()


def _per_item(e) -> bool:
    """Whether a rejected upsert names one of its inputs (bad bytes), rather than the request as a whole."""
    return isinstance(e, InvalidArgument) or e.message.startswith("images[")
