"""Remote embedding for `simdex index --remote-embed`: the planned file bytes go to the service as they are
(`upsert(images=...)`), several chunks in flight; the service decodes and embeds.

A chunk the service rejects because of one input (`err.item`, the index of the bad file in the request) loses only
that file: it is reported, and the files around it are sent again. A chunk that reaches a server budget at input i
(RESOURCE_EXHAUSTED, e.g. decoded pixels per request) is split there; only a file over the budget on its own fails.
Errors about the request as a whole stop the run."""
from __future__ import annotations

from simdex.embedder.inputs import item_label, without_label
from simdex.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, SimdexError
from simdex.jobs import sources as src
from simdex.jobs.pipeline import Job, Uploader

CHUNK_BYTES = 64 * 1024 ** 2   # raw bytes per remote-embed chunk, whatever --chunk-size says


def send_files(job: Job, items: list[src.FileItem]) -> None:
    """Plan `items` and upsert the bytes of those not stored yet, in chunks of at most chunk_size files and
    CHUNK_BYTES bytes, `inflight` chunks at a time."""
    info = job.collection()
    job.start_progress(len(items), "file")
    up = Uploader(lambda work: _send_chunk(job, *work), job.o.inflight)
    chunk, size = [], 0
    try:
        for p in job.todo(items, keep_bytes=True):
            chunk.append(p)
            size += len(p.data)
            if len(chunk) >= job.o.chunk_size or size >= CHUNK_BYTES:
                up.put((info.embedder, chunk))
                chunk, size = [], 0
        if chunk:
            up.put((info.embedder, chunk))
    finally:
        up.close()


def _send_chunk(job: Job, embedder: str, files: list[src.Planned]) -> None:
    """Multi-frame files (every frame an item) one by one, the others in one transaction."""
    single = [p for p in files if len(p.ids) == 1]
    for p in files:
        if len(p.ids) > 1:
            _send_frames(job, embedder, p)
    if single:
        _send_single(job, single)


def _input_at_fault(e: SimdexError, n: int) -> int:
    """The index of the input `e` is about, or `e` raised again when it is about the whole request."""
    if e.item is None or not 0 <= e.item < n:
        raise e
    return e.item


def _send_single(job: Job, files: list[src.Planned]) -> None:
    """One transaction for `files`. When the service rejects input i, file i is reported, files[:i] (the service
    decodes in order and stops at the first bad input, so they decoded) are sent again, then the rest."""
    while files:
        try:
            _upsert(job, files)
        except ResourceExhausted as e:  # a server budget (decoded pixels per request) reached at input i
            i = _input_at_fault(e, len(files))
            if i:  # the inputs before it fit: send them alone, then go on from input i
                _send_single(job, files[:i])
                files = files[i:]
                continue
            bad = files[0]  # over the budget on its own
            job.fail(bad.item.id, bad.item.where, without_label(e.message, item_label("images", 0, bad.ids[0])))
            files = files[1:]
            continue
        except (InvalidArgument, FailedPrecondition) as e:
            i = _input_at_fault(e, len(files))
            bad = files[i]
            job.fail(bad.item.id, bad.item.where, without_label(e.message, item_label("images", i, bad.ids[0])))
            if i:
                _send_single(job, files[:i])
            files = files[i + 1:]
            continue
        job.advance(len(files), indexed=len(files))
        return


def _upsert(job: Job, files: list[src.Planned]) -> None:
    metas = [src.item_metadata(p.item, {}, p.n_frames // 2 if p.dicom else None) for p in files]
    job.c.upsert(job.o.collection, [p.ids[0] for p in files], metadata=metas,
                 content_hashes=[p.hashes[0] for p in files], images=[p.data for p in files])


def _send_frames(job: Job, embedder: str, p: src.Planned) -> None:
    """Every frame of a multi-frame DICOM: embedded by the service, stored as one transaction."""
    try:
        e = job.c.embed_items(embedder, images=[p.data], all_frames=True)
    except (InvalidArgument, FailedPrecondition) as err:
        _input_at_fault(err, 1)
        job.fail(p.item.id, p.item.where, without_label(err.message, item_label("images", 0)))
        return
    ids = src.frame_ids(p.item.id, len(e.vectors), True)
    hashes = src.frame_hashes(p.hashes[0].split("#")[0], len(ids))
    metas = [src.item_metadata(p.item, e.metadata[r], int(e.frame_index[r])) for r in range(len(ids))]
    job.c.upsert(job.o.collection, ids, e.vectors, metas, hashes, embedder_fingerprint=e.fingerprint)
    job.advance(1, indexed=len(ids))
