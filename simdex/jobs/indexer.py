"""The batch indexing job behind `simdex index`: files (or rows of vectors) -> embeddings -> upserts, resumable.

The job plans (reads and hashes files in blocks, asks the collection which ids already hold the same content hash,
and skips those), then hands the rest to one of three pipelines: local embedding (simdex.jobs.local_embed: DataLoader
workers decode, the model runs here, vectors are upserted), remote embedding (simdex.jobs.remote_embed: the bytes
go to the service, which decodes and embeds), or, with --ray, a Ray Data pipeline (simdex.jobs.ray_pipeline: decode
tasks and embedding actors on a Ray cluster, upserts from here). Rows of a .npy / Parquet file are upserted as they are.

Interrupting at any point loses at most the chunks not yet acknowledged; the next run skips what is stored with the
same content hash (sha256 of the file bytes, '#frame' appended for the frames of a multi-frame DICOM) and sends
the rest. Bad files never stop a run: each is reported (callback + a JSON-lines error report rewritten per run) and,
being unstored, tried again by the next run. A PACS source (`dicomweb+http://...`, simdex.jobs.dicomweb) is listed
with QIDO-RS, and only the instances not yet stored are fetched with WADO-RS, then planned from their bytes."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from simdex.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from simdex.jobs import dicomweb, local_embed, ray_pipeline, remote_embed
from simdex.jobs import sources as src
from simdex.jobs.pipeline import ErrorReport, Uploader
from simdex.wire import canonical_json, content_hash

LOG = logging.getLogger(__name__)

PLAN_BLOCK = 512               # files read, hashed and looked up per round trip


@dataclass
class IndexOptions:
    collection: str
    embedder: str | None = None      # needed to create the collection; checked against an existing one
    remote_embed: bool | None = None  # None: the faster mode for the transport (see default_remote_embed)
    weights: str | None = None       # local-embed: weights file of the embedder (default: the torch hub cache)
    device: str | None = None        # local-embed: cpu | cuda (default: the GPU when present)
    workers: int = -1                # decoding processes (-1: local_embed.default_workers(); 0: in this process)
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
    pacs: dicomweb.PacsOptions | None = None  # dicomweb+ source: which instances, and the PACS credentials
    ray: str | None = None           # embed on Ray Data (simdex.jobs.ray_pipeline): auto | local | a cluster address
    ray_actors: int = 0              # --ray: embedding actors (0: one per GPU, else one per two CPUs)


@dataclass
class Summary:
    collection: str
    source: str
    mode: str              # local-embed | remote-embed | vectors
    inputs: int = 0        # files (or rows) in the source
    indexed: int = 0       # items stored by this run
    skipped: int = 0       # items already stored with the same content
    failed: int = 0        # inputs that could not be stored (see errors_file)
    fetched: int = 0       # PACS source: instances retrieved with WADO-RS by this run
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


class Indexer:
    """Index one source into one collection through `client` (a remote Client or a Client.local).

    The pipelines (local_embed, remote_embed) work through this object, as the `simdex.jobs.pipeline.Job` it
    implements: `c`, `o`, `s`, `embedder`, and the steps collection(), todo(), start_progress(), advance(), fail(),
    send_vectors()."""

    def __init__(self, client, opts: IndexOptions, *, on_error: Callable[[dict], None] | None = None,
                 embedder=None):
        """`on_error(row)` hears of each failed input ({"id", "path", "reason"}); `embedder`: an already loaded
        embedder for local embedding (default: the in-process service's, or one loaded from opts.weights)."""
        self.c, self.o, self.embedder = client, opts, embedder
        self.on_error = on_error or (lambda row: LOG.warning("%s: %s", row["path"] or row["id"], row["reason"]))
        if opts.chunk_size < 1 or opts.batch_size < 1:
            raise InvalidArgument(f"chunk_size {opts.chunk_size} and batch_size {opts.batch_size} must be >= 1")
        self.s: Summary | None = None
        self.report: ErrorReport | None = None
        self._pacs: dicomweb.PacsSource | None = None
        self._bar = None
        self._lock = threading.Lock()

    # ---- entry ---------------------------------------------------------------------------------------------
    def run(self, source: str | os.PathLike) -> Summary:
        """Index `source`: a folder, a file list, a .npy / Parquet file, or a PACS (dicomweb+http(s)://...)."""
        t0 = time.perf_counter()
        if dicomweb.is_dicomweb(str(source)):
            with tempfile.TemporaryDirectory(prefix="simdex-pacs-") as spool:
                self._pacs = dicomweb.PacsSource(str(source), self.o.pacs or dicomweb.PacsOptions(), Path(spool),
                                                 self.o.all_frames)
                return self._run(t0, str(source), self._pacs.items)
        if self.o.pacs is not None:
            raise InvalidArgument(f"source {str(source)!r}: PACS options need a dicomweb+http(s)://... source")
        o = self.o
        path = Path(source)
        return self._run(t0, str(path), src.open_source(path, Path(o.ids_file) if o.ids_file else None,
                                                    o.vector_column, o.id_column))

    def _run(self, t0: float, source: str, found: list[src.FileItem] | src.VectorSource) -> Summary:
        o = self.o
        errors = Path(o.errors_file or f"{o.collection}.index-errors.jsonl")
        self.report = ErrorReport(errors, self.on_error)
        try:
            if isinstance(found, src.VectorSource):
                self.s = Summary(o.collection, source, "vectors", found.n, errors_file=str(errors))
                self._vectors(found)
            else:
                mode, pipeline = self._pipeline()
                self.s = Summary(o.collection, source, mode, len(found), errors_file=str(errors))
                pipeline(self, found)
        finally:
            self.report.close()
            if self._bar is not None:
                self._bar.close()
        self.s.failed = self.report.count
        self.s.fetched = self._pacs.fetched if self._pacs is not None else 0
        self.s.seconds = time.perf_counter() - t0
        return self.s

    def _pipeline(self) -> tuple[str, Callable]:
        """The summary's mode and the pipeline that embeds files: Ray (--ray), remote or local embedding."""
        if self.o.ray is not None:
            if self.o.remote_embed is not None:
                raise InvalidArgument("--ray embeds on the Ray cluster: give neither --remote-embed nor --local-embed")
            return "ray", ray_pipeline.embed_files
        if self._remote_mode():
            return "remote-embed", remote_embed.send_files
        return "local-embed", local_embed.embed_files

    def _remote_mode(self) -> bool:
        if self.o.remote_embed is not None:
            return self.o.remote_embed
        in_process, cuda = self.c.in_process, False
        if in_process:
            from simdex.embedder.base import pick_device  # noqa: PLC0415

            pool = self.c.embedder_pool
            cuda = pick_device(self.o.device or (pool.device if pool is not None else None)).type == "cuda"
        return default_remote_embed(in_process, cuda)

    # ---- collection ----------------------------------------------------------------------------------------
    def collection(self, dim: int = 0):
        """The target collection, created when missing (dim from the embedder for files, from the data for
        vectors). An existing one must match the embedder (files) or be a plain-vector collection (vectors)."""
        o = self.o
        try:
            info = self.c.get_collection(o.collection)
        except NotFound:
            info = self._create(dim)
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

    def _create(self, dim: int):
        o = self.o
        if not dim and not o.embedder:
            raise InvalidArgument(f"collection {o.collection!r} does not exist: give --embedder to create it")
        try:
            info = self.c.create_collection(o.collection, dim, o.metric, o.index, embedder="" if dim else o.embedder)
        except AlreadyExists:  # another job created it meanwhile
            return self.c.get_collection(o.collection)
        LOG.info("created collection %s (dim %d, %s, %s, embedder %r)", info.name, info.dim, info.metric,
                 info.index, info.embedder)
        return info

    def _stored(self, ids: list[str]) -> dict[str, str]:
        """id -> content hash of the ids already stored."""
        if not ids:
            return {}
        return {it.id: it.content_hash
                for it in self.c.get(self.o.collection, ids, with_vectors=False, ignore_missing=True)}

    # ---- progress ------------------------------------------------------------------------------------------
    def start_progress(self, total: int, unit: str) -> None:
        """A tqdm bar on stderr over `total` inputs (none without --progress or without tqdm)."""
        if not self.o.progress:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415
        except ImportError:
            return
        import sys  # noqa: PLC0415

        self._bar = tqdm(total=total, unit=unit, desc=f"index {self.o.collection}", file=sys.stderr,
                         dynamic_ncols=True, smoothing=0.1)

    def advance(self, inputs: int, indexed: int = 0, skipped: int = 0) -> None:
        """`inputs` inputs done, storing `indexed` items and skipping `skipped` (thread-safe: uploaders call it)."""
        with self._lock:
            self.s.indexed += indexed
            self.s.skipped += skipped
            if self._bar is not None:
                self._bar.update(inputs)
                self._bar.set_postfix(indexed=self.s.indexed, skipped=self.s.skipped, failed=self.report.count,
                                      refresh=False)

    def fail(self, id_: str, path: str, reason: str) -> None:
        """One input could not be stored: reported, counted as done."""
        self.report.add(id_, path, reason)
        self.advance(1)

    # ---- planning: which files still need indexing ---------------------------------------------------------
    def todo(self, items: list[src.FileItem], keep_bytes: bool) -> Iterator[src.Planned]:
        """Files not yet stored with the same content, in source order. Unreadable files are reported here.
        PACS instances: those not stored yet, fetched (simdex.jobs.dicomweb.PacsSource.todo)."""
        if self._pacs is not None:
            yield from self._pacs.todo(self, self._stored, keep_bytes, PLAN_BLOCK)
            return
        with ThreadPoolExecutor(2, thread_name_prefix="simdex-hash") as pool:
            for a in range(0, len(items), PLAN_BLOCK):
                block = list(pool.map(lambda i: self._plan_one(i, items[i], keep_bytes),
                                      range(a, min(len(items), a + PLAN_BLOCK))))
                ok = [p for p in block if p is not None]
                stored = self._stored([i for p in ok for i in p.ids])
                for p in ok:
                    if all(stored.get(i) == h for i, h in zip(p.ids, p.hashes)):
                        self.advance(1, skipped=len(p.ids))
                    else:
                        yield p

    def _plan_one(self, i: int, item: src.FileItem, keep_bytes: bool) -> src.Planned | None:
        try:
            return src.plan_file(i, item, self.o.all_frames, keep_bytes)
        except OSError as e:
            self.fail(item.id, str(item.path), f"cannot read: {e.strerror or e}")
            return None

    # ---- upserts of vectors (local embedding, vector files) ------------------------------------------------
    def send_vectors(self, chunk: tuple, fingerprint: str) -> None:
        """Upsert one chunk (ids, (n, d) float32 x, metadata, content hashes, files it completes)."""
        ids, x, metas, hashes, files = chunk
        self.c.upsert(self.o.collection, ids, x, metas, hashes, embedder_fingerprint=fingerprint)
        self.advance(files, indexed=len(ids))

    def _vectors(self, vs: src.VectorSource) -> None:
        if self.o.ray is not None:
            raise InvalidArgument(f"source {self.s.source!r} holds vectors, which are upserted as they are: --ray "
                                  "embeds files (drop --ray)")
        if vs.n == 0:
            raise InvalidArgument(f"source {self.s.source!r} holds no rows")
        self.collection(vs.dim)
        self.start_progress(vs.n, "row")
        up = Uploader(lambda ch: self.send_vectors(ch, ""), 1)
        try:
            for blk in vs.blocks(self.o.chunk_size):
                todo = self._vector_todo(blk)
                if todo is not None:
                    up.put(todo)
        finally:
            up.close()

    def _vector_todo(self, blk: src.VectorBlock) -> tuple | None:
        """The chunk of `blk`'s rows still to store (None when none is): bad rows reported, stored ones skipped."""
        good = np.isfinite(blk.x).all(axis=1)
        for i in np.flatnonzero(~good):
            self.fail(blk.ids[i], "", f"row {blk.ids[i]!r}: missing vector, wrong length, NaN or infinity")
        keep = np.flatnonzero(good)
        ids = [blk.ids[i] for i in keep]
        metas = [blk.metadata[i] for i in keep]
        x = blk.x[keep]
        hashes = [content_hash(x[j].tobytes(), canonical_json(metas[j])) for j in range(len(ids))]
        stored = self._stored(ids)
        todo = [j for j in range(len(ids)) if stored.get(ids[j]) != hashes[j]]
        self.advance(len(ids) - len(todo), skipped=len(ids) - len(todo))
        if not todo:
            return None
        return [ids[j] for j in todo], x[todo], [metas[j] for j in todo], [hashes[j] for j in todo], len(todo)
