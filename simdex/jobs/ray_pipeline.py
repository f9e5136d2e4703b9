"""Batch indexing on Ray Data for `simdex index --ray [auto|local|ADDRESS]`: the --local-embed job spread over a Ray
cluster (or a local Ray runtime).

The driver (this process) lists and plans the files as the other pipelines do (`Job.todo`: read and hash, skip what
the collection holds with the same content hash, report unreadable files; a PACS's new instances fetched and
spooled), then runs one Ray Data pipeline over the files still to index:

    from_items(files)
      -> map_batches(decode_files, num_cpus=DECODE_CPUS)    CPU tasks: read, decode, preprocess (local_embed's
                                                            FileDataset and collate; bad files become rows)
      -> map_batches(Embed, ActorPoolStrategy(N), num_gpus)  an actor pool: the model, loaded once per actor
      -> iter_batches() in the driver                       failures reported, vectors upserted in chunks

Uploads run from the driver, through the job's own Client: only the driver needs to reach the service (a remote
`--target`, or the in-process service of `--data`, which no Ray worker could reach), progress and the summary are
counted where they are shown, and an upsert is acknowledged before its files count as done. A vector is 1-16 KB
against the decoded image it came from, so the driver's upload is not what limits a cluster; Upsert being idempotent
by content hash, a chunk sent again (by a rerun) stores nothing twice.

Decode tasks ask for DECODE_CPUS of a CPU, so actors (one CPU each) can never take all the slots: on 2 cores, one
actor leaves 4 decode slots. Faults: Ray Data restarts a dead actor and runs its batch again (its actor pools have
max_restarts=-1, max_task_retries=-1), a decode task whose worker dies is retried; a dead driver loses the chunks
not yet acknowledged, and the next run sends them (resume by content hash).

A local runtime binds loopback only: node address 127.0.0.1, no dashboard, usage stats off. Ray would otherwise turn
127.0.0.1 into this machine's interface address (`resolve_ip_for_localhost`) and listen there;
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it keep the loopback address (what it does on laptops), which is why these
variables are set before `ray` is first imported. `ray` is imported only here, and only when --ray is given."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from simdex.errors import FailedPrecondition, InvalidArgument, Unavailable
from simdex.jobs.local_embed import FileDataset, Rows, collate, embedder_for
from simdex.jobs.pipeline import Job, Uploader
from simdex.jobs.sources import FileItem

LOG = logging.getLogger(__name__)

DECODE_CPUS = 0.25       # per decode task: actors (1 CPU each) cannot starve decoding, even on 2 cores
DECODE_BATCH = 16        # files per decode task
ACTOR_CPUS = 1           # per embedding actor (its torch threads)
CONNECT_TIMEOUT_S = 10.0  # to reach a cluster's address before Ray is asked to join it
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# ---- the Ray runtime ----------------------------------------------------------------------------------------------
def import_ray():
    """`ray`, imported with usage stats off and loopback kept as the node address of a local runtime (RAY_ENV, set
    before the first import; a variable already in the environment is left as it is)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: F401, PLC0415
    except ImportError:
        raise FailedPrecondition("--ray needs Ray Data: pip install 'simdex[ray]'") from None
    return ray


@contextmanager
def runtime(where: str) -> Iterator[object]:
    """Ray connected for the job, shut down after (a cluster is only disconnected from; a local runtime stops).

    `where`: "local" starts a local runtime (loopback, this machine's CPUs); "auto" connects to the cluster of
    RAY_ADDRESS, or to the one `ray start` started on this machine, else starts a local runtime; anything else is a
    cluster address (HOST:PORT of its head's GCS, or ray://HOST:10001 for Ray Client). A Ray already initialised by
    the caller is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    _init(ray, where)
    try:
        yield ray
    finally:
        ray.shutdown()


def _init(ray, where: str) -> None:
    opts = {"logging_level": logging.WARNING, "log_to_driver": True}
    if where == "auto":
        where = os.environ.get("RAY_ADDRESS") or _started_cluster(ray) or "local"
    if where == "local":
        ray.init(address="local", num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1",
                 include_dashboard=False, **opts)
        return
    _check_reachable(where)
    try:
        ray.init(address=where, **opts)
    except (ConnectionError, ValueError) as e:
        raise FailedPrecondition(f"--ray {where}: cannot connect to a Ray cluster there: {e}") from None
    LOG.info("connected to the Ray cluster at %s", where)


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Unavailable unless something accepts TCP connections at `address` (HOST:PORT or ray://HOST:PORT): Ray itself
    would retry a dead address for minutes."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"--ray {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise Unavailable(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _started_cluster(ray) -> str | None:
    """The address of the cluster `ray start` last started on this machine (what ray.init() would join), or None.
    Unlike ray.init(address="auto"), a local runtime that another driver started is never joined: it stops when
    that driver ends (the check of ray.util.multiprocessing's Pool)."""
    return ray._private.utils.read_ray_address()


def pool_size(resources: dict, actors: int) -> tuple[int, int]:
    """(embedding actors, GPUs per actor) for a cluster of `resources` (ray.cluster_resources()): `actors` when given
    (> 0), else one per GPU, or on a CPU-only cluster one per two CPUs (the other half decodes); one GPU each."""
    gpus = int(resources.get("GPU", 0))
    if actors < 0:
        raise InvalidArgument(f"--ray-actors {actors} must be >= 1 (or 0: one per GPU, else one per two CPUs)")
    if actors == 0:
        actors = gpus or max(1, int(resources.get("CPU", 1)) // 2)
    return actors, (1 if gpus else 0)


# ---- the stages -----------------------------------------------------------------------------------------------
def decode_files(batch: dict, preprocess, all_frames: bool, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Ray task: files (columns id, path, origin) -> one row per item (a file's frames with --all-frames): id, hash,
    meta (JSON text), end (1 on a file's last row), reason ('' or why the file failed: its one row), where (the
    failed file's path or URL) and `x`, the preprocessed (*shape) float32 input (zeros on a failed row)."""
    items = [FileItem(str(i), Path(str(p)), str(o)) for i, p, o in zip(batch["id"], batch["path"], batch["origin"])]
    files = FileDataset(items, preprocess, all_frames)
    b = collate([files[j] for j in range(len(items))])
    ok = b.x.numpy() if b.x is not None else np.zeros((0, *shape), np.float32)
    fails = b.failed
    return {
        "id": np.array(b.ids + [f.id for f in fails], dtype=object),
        "hash": np.array(b.hashes + [""] * len(fails), dtype=object),
        "meta": np.array([json.dumps(m) for m in b.metadata] + ["{}"] * len(fails), dtype=object),
        "end": np.array(b.ends + [1] * len(fails), dtype=np.int64),
        "where": np.array([""] * len(b.ids) + [f.path for f in fails], dtype=object),
        "reason": np.array([""] * len(b.ids) + [f.reason for f in fails], dtype=object),
        "x": np.concatenate([ok, np.zeros((len(fails), *shape), np.float32)]),
    }


class Embed:
    """Ray actor: the embedder, loaded once, runs the forward of each batch. Adds `vector` ((n, dim) float32; zeros
    on failed rows), `fingerprint` and `model_s` (the batch's forward seconds, on its first row); drops `x`."""

    def __init__(self, name: str, weights: str | None, device: str | None):
        from simdex.embedder import registry  # noqa: PLC0415

        self.emb = registry.load(name, weights, device)

    def __call__(self, batch: dict) -> dict:
        import torch  # noqa: PLC0415

        n = len(batch["id"])
        ok = np.flatnonzero(batch["reason"] == "")
        y = np.zeros((n, self.emb.dim), np.float32)
        t = time.perf_counter()
        if len(ok):
            y[ok] = self.emb.forward(torch.from_numpy(np.ascontiguousarray(batch["x"][ok])))
        seconds = np.zeros(n)
        seconds[:1] = time.perf_counter() - t
        out = {k: v for k, v in batch.items() if k != "x"}
        out.update(vector=y, fingerprint=np.array([self.emb.fingerprint] * n, dtype=object), model_s=seconds)
        return out


# ---- the job -----------------------------------------------------------------------------------------------------
def embed_files(job: Job, items: list[FileItem]) -> None:
    """Plan `items` here, then decode, embed (on the Ray runtime of job.o.ray) and upsert those not stored yet."""
    info = job.collection()
    job.start_progress(len(items), "file")
    todo = [p.item for p in job.todo(items, keep_bytes=False)]
    if not todo:
        return  # everything stored already: no runtime to start
    pre = _preprocessing(job, info.embedder)
    shape = tuple(pre.preprocess(np.zeros((8, 8, 3), np.uint8)).shape)  # every input has the same shape
    o = job.o
    with runtime(o.ray) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job's own bar counts acknowledged files
        ctx.print_on_execution_start = False
        actors, gpus = pool_size(ray.cluster_resources(), o.ray_actors)
        device = o.device or ("cuda" if gpus else "cpu")
        LOG.info("Ray: %d file(s) to index, %d embedding actor(s) on %s", len(todo), actors, device)
        ds = (ray.data.from_items([{"id": it.id, "path": str(it.path), "origin": it.origin} for it in todo])
              .map_batches(decode_files, batch_size=DECODE_BATCH, num_cpus=DECODE_CPUS,
                           fn_kwargs={"preprocess": pre.preprocess, "all_frames": o.all_frames, "shape": shape})
              .map_batches(Embed, batch_size=o.batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                           num_cpus=ACTOR_CPUS, num_gpus=gpus,
                           fn_constructor_kwargs={"name": info.embedder, "weights": o.weights, "device": device}))
        _upload(job, info, ds.iter_batches(batch_size=None, batch_format="numpy"))


def _preprocessing(job: Job, name: str):
    """The embedder whose preprocessing the decode tasks run: the job's or the in-process service's (loaded anyway),
    else one loaded here on the CPU (its `preprocess` is all the driver uses; the actors load their own)."""
    if job.embedder is not None or job.c.embedder_pool is not None:
        return embedder_for(job, name)
    from simdex.embedder import registry  # noqa: PLC0415

    return registry.load(name, job.o.weights, "cpu")


def _upload(job: Job, info, batches: Iterator[dict]) -> None:
    """Report the failed rows, and upsert the others in chunks of chunk_size, from a background thread."""
    up = Uploader(lambda work: job.send_vectors(*work), 1)
    rows, fp = Rows(), info.embedder_fingerprint
    try:
        for b in batches:
            bad = b["reason"] != ""
            for i in np.flatnonzero(bad):
                job.fail(str(b["id"][i]), str(b["where"][i]), str(b["reason"][i]))
            good = np.flatnonzero(~bad)
            job.s.model_seconds += float(b["model_s"].sum())
            if not len(good):
                continue
            fp = _same_fingerprint(info, fp, set(b["fingerprint"][good]))
            rows.add([str(i) for i in b["id"][good]], list(b["vector"][good]),
                     [json.loads(m) for m in b["meta"][good]], [str(h) for h in b["hash"][good]],
                     [int(e) for e in b["end"][good]])
            while len(rows) >= job.o.chunk_size:
                up.put((rows.take(job.o.chunk_size), fp))
        if len(rows):
            up.put((rows.take(len(rows)), fp))
    finally:
        up.close()


def _same_fingerprint(info, fp: str, seen: set[str]) -> str:
    """The one fingerprint of the run's vectors: the collection's, or the first actor's for a new collection. Actors
    on other weights or another numeric path (a GPU's fp32 next to a CPU's bf16) stop the run before any upsert."""
    want = fp or next(iter(seen))
    if seen != {want}:
        raise FailedPrecondition(
            f"collection {info.name!r} holds vectors of {info.embedder} fingerprint {want}; the Ray actors embed "
            f"with {sorted(seen - {want})}: give --weights with the collection's weights (readable on every node), "
            "and --device so that all actors take the same numeric path")
    return want
