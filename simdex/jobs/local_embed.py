"""Local embedding for `simdex index --local-embed`: DataLoader workers read, decode and preprocess files in
parallel, this process runs the model, and one uploader thread upserts the vectors in chunks, so the model never
waits for the database.

The workers are forked (they inherit the embedder's preprocessing, closures that do not pickle); a bad file comes
back from its worker as a `Failed` row, never as an exception."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from simdex.embedder.inputs import without_label
from simdex.errors import FailedPrecondition, InvalidArgument, SimdexError
from simdex.jobs.pipeline import Job, Uploader
from simdex.jobs.sources import FileItem, Planned, frame_hashes, frame_ids, item_metadata

LOG = logging.getLogger(__name__)


def default_workers() -> int:
    """Decoding workers: one core is left to the model (and to the main thread that plans and feeds it)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# ---- the pipeline ---------------------------------------------------------------------------------------------
def embedder_for(job: Job, name: str):
    """The loaded embedder `name`: the one given to the job, the in-process service's own (its weights and device,
    loaded once), or one loaded here from --weights / the torch hub cache."""
    given = job.embedder
    if given is not None:
        if given.name != name:
            raise InvalidArgument(f"collection {job.o.collection!r} is filled by {name!r}, the embedder given "
                                  f"is {given.name!r}")
        return given
    pool = job.c.embedder_pool  # None for a remote client
    if pool is not None:
        return pool.get(name)
    from simdex.embedder import registry  # noqa: PLC0415

    return registry.load(name, job.o.weights, job.o.device)


def embed_files(job: Job, items: list[FileItem]) -> None:
    """Plan, decode (in `job.o.workers` processes; -1: default_workers(); 0: in this one), embed and upsert `items`
    into the job's collection."""
    from torch.utils.data import DataLoader  # noqa: PLC0415

    info = job.collection()
    emb = embedder_for(job, info.embedder)
    if info.embedder_fingerprint and info.embedder_fingerprint != emb.fingerprint:
        raise FailedPrecondition(
            f"collection {info.name!r} holds vectors of {info.embedder} weights {info.embedder_fingerprint}; "
            f"the local weights are {emb.fingerprint}: give --weights with the collection's weights, or "
            "--remote-embed")
    o = job.o
    workers = default_workers() if o.workers < 0 else o.workers
    job.start_progress(len(items), "file")
    todo = TodoBatches(job.todo(items, keep_bytes=False), o.batch_size)
    loader = DataLoader(
        FileDataset(items, emb.preprocess, o.all_frames), batch_sampler=todo, num_workers=workers,
        collate_fn=collate, pin_memory=emb.device.type == "cuda", prefetch_factor=4 if workers else None,
        # fork: workers inherit the embedder's preprocessing (closures do not pickle) and start in milliseconds
        multiprocessing_context="fork" if workers else None)
    batches = iter(loader)  # forks the workers before the uploader thread exists
    up = Uploader(lambda ch: job.send_vectors(ch, emb.fingerprint), 1)
    rows = Rows()
    try:
        for b in batches:
            for f in b.failed:
                job.fail(f.id, f.path, f.reason)
            if b.x is not None:
                rows.add(b.ids, _forward(job, emb, b.x), b.metadata, b.hashes, b.ends)
            while len(rows) >= o.chunk_size:
                up.put(rows.take(o.chunk_size))
        if len(rows):
            up.put(rows.take(len(rows)))
    finally:
        up.close()


def _forward(job: Job, emb, x) -> np.ndarray:
    """(M, 3, h, w) float32 tensor -> (M, dim) float32 in slices of batch_size; the time counts as model time."""
    t = time.perf_counter()
    bs = job.o.batch_size
    y = np.concatenate([emb.forward(x[s:s + bs]) for s in range(0, len(x), bs)])
    job.s.model_seconds += time.perf_counter() - t
    return y


# ---- the decoding worker (runs in DataLoader processes) ----------------------------------------------------
@dataclass
class Loaded:
    """One decoded file: (m, 3, h, w) float32 `x`, and per row its id, metadata and content hash."""
    index: int
    x: object  # torch.Tensor
    ids: list[str]
    metadata: list[dict]
    hashes: list[str]


@dataclass
class Failed:
    index: int
    id: str
    path: str
    reason: str


@dataclass
class Batch:
    """What a worker hands the model: stacked rows of every good file of the batch, and the failures."""
    x: object = None  # torch.Tensor (M, 3, h, w) or None when no file of the batch decoded
    ids: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # 1 on each file's last row: progress counts whole files
    failed: list[Failed] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pin-memory thread when the model runs on a GPU (faster, async copies)."""
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


class FileDataset:
    """Map-style dataset over `items`: index -> Loaded | Failed. Runs in DataLoader workers (forked, so the
    embedder's `preprocess` is inherited, never pickled)."""

    def __init__(self, items: list[FileItem], preprocess: Callable, all_frames: bool):
        self.items, self.preprocess, self.all_frames = items, preprocess, all_frames

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch  # noqa: PLC0415

        from simdex.embedder.decode import decode_image  # noqa: PLC0415
        from simdex.embedder.dicom import is_dicom  # noqa: PLC0415

        it = self.items[i]
        try:
            data = it.path.read_bytes()
            frames = decode_image(data, it.id, self.all_frames)
            x = torch.stack([self.preprocess(f.rgb) for f in frames])
        except OSError as e:
            return Failed(i, it.id, it.where, f"cannot read: {e.strerror or e}")
        except SimdexError as e:
            return Failed(i, it.id, it.where, without_label(e.message, it.id))  # the report has the id
        digest = hashlib.sha256(data).hexdigest()
        dicom = is_dicom(data)
        ids = frame_ids(it.id, len(frames), self.all_frames)
        metas = [item_metadata(it, f.metadata, f.frame if dicom else None) for f in frames]
        return Loaded(i, x, ids, metas, frame_hashes(digest, len(ids)))


def collate(results: list) -> Batch:
    """Stack the rows of a batch's good files (in the worker, so the model process only does the forward)."""
    import torch  # noqa: PLC0415

    b = Batch()
    good = []
    for r in results:
        if isinstance(r, Failed):
            b.failed.append(r)
            continue
        good.append(r.x)
        b.ids += r.ids
        b.metadata += r.metadata
        b.hashes += r.hashes
        b.ends += [0] * (len(r.ids) - 1) + [1]
    if good:
        b.x = good[0] if len(good) == 1 else torch.cat(good)
    return b


class TodoBatches:
    """The DataLoader's batch sampler: lists of `size` file indices, taken lazily from the planner (the DataLoader
    asks for the next batch only as workers free up, so planning streams alongside embedding)."""

    def __init__(self, todo: Iterator[Planned], size: int):
        self.todo, self.size = todo, size

    def __iter__(self) -> Iterator[list[int]]:
        batch = []
        for p in self.todo:
            batch.append(p.index)
            if len(batch) == self.size:
                yield batch
                batch = []
        if batch:
            yield batch


class Rows:
    """Embedded rows waiting for their chunk: ids, vectors, metadata, hashes, and `ends` (1 on a file's last row,
    so progress counts files when they are acknowledged)."""

    def __init__(self):
        self.ids, self.x, self.metas, self.hashes, self.ends = [], [], [], [], []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids, x, metas, hashes, ends) -> None:
        self.ids += ids
        self.x.extend(x)
        self.metas += metas
        self.hashes += hashes
        self.ends += ends

    def take(self, n: int) -> tuple:
        out = (self.ids[:n], np.stack(self.x[:n]), self.metas[:n], self.hashes[:n], sum(self.ends[:n]))
        del self.ids[:n], self.x[:n], self.metas[:n], self.hashes[:n], self.ends[:n]
        return out
