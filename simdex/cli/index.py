"""`simdex index SOURCE --collection C`: embed a folder, a list of files, a vector file or the instances of a PACS
(`dicomweb+http://HOST:PORT/dicom-web`) into a collection.

Exit status: 0 when every input was stored (or already was), 1 when some failed (listed on stderr and in the error
report; the next run tries them again), 2 for a simdex error that stopped the run, 130 when interrupted."""
from __future__ import annotations

import json
import sys

from simdex.cli.common import client_args, open_client, pacs_auth, pacs_auth_args


def _open_client(args):
    """An in-process Client over --data (with the embedder's --weights), else a remote one (--target)."""
    if args.weights and not args.embedder:
        raise SystemExit("--weights needs --embedder (the embedder the weights file belongs to)")
    if args.data:
        from simdex.clients import Client  # noqa: PLC0415

        weights = {args.embedder: args.weights} if args.weights and args.embedder else None
        return Client.local(args.data, weights=weights, device=args.device)
    return open_client(args)


def _echo_error(row: dict) -> None:
    line = f"simdex index: failed: {row['path'] or row['id']}: {row['reason']}"
    try:
        from tqdm import tqdm  # noqa: PLC0415 - writes above the progress bar instead of through it

        tqdm.write(line, file=sys.stderr)
    except ImportError:
        print(line, file=sys.stderr)


PACS_FLAGS = ("modality", "study", "since", "pacs_token_file", "pacs_user", "pacs_password_file")


def _pacs_options(args):
    """The PacsOptions of a dicomweb+ source, or of PACS flags given with another source (the indexer refuses
    those); None otherwise."""
    from simdex.jobs import dicomweb  # noqa: PLC0415

    if not dicomweb.is_dicomweb(args.source) and all(getattr(args, f) is None for f in PACS_FLAGS):
        return None
    return dicomweb.PacsOptions(args.modality, tuple(args.study or ()), args.since, pacs_auth(args))


def cmd_index(args) -> int:
    from simdex.jobs.indexer import Indexer, IndexOptions  # noqa: PLC0415

    opts = IndexOptions(
        collection=args.collection, embedder=args.embedder, remote_embed=args.remote_embed, weights=args.weights,
        device=args.device, workers=args.workers, batch_size=args.batch_size, chunk_size=args.chunk_size,
        inflight=args.inflight, all_frames=args.all_frames, metric=args.metric, index=args.index,
        ids_file=args.ids_file, vector_column=args.vector_column, id_column=args.id_column,
        errors_file=args.errors, progress=not args.no_progress, pacs=_pacs_options(args), ray=args.ray,
        ray_actors=args.ray_actors)
    client = _open_client(args)
    try:
        with client:
            s = Indexer(client, opts, on_error=_echo_error).run(args.source)
    except KeyboardInterrupt:
        print("simdex index: interrupted; acknowledged chunks are stored, run again to resume", file=sys.stderr)
        return 130
    fetched = f"; fetched {s.fetched} from the PACS" if opts.pacs is not None else ""
    line = (f"indexed {s.indexed}, skipped {s.skipped}, failed {s.failed} in {s.seconds:.1f} s "
            f"({s.mode}, collection {s.collection}{fetched})" + (f"; failures in {s.errors_file}" if s.failed else ""))
    if args.json:
        print(line, file=sys.stderr)
        print(json.dumps(s.as_dict()))
    else:
        print(line)
    return 1 if s.failed else 0


def add_parsers(sub) -> None:
    s = sub.add_parser("index", help="embed and store a folder of images/DICOM, a file list, or a .npy/Parquet "
                                     "file of vectors (resumable)")
    s.add_argument("source", help="a folder (recursive), a text file of paths (relative to its folder), a .npy "
                                  "file of vectors, a Parquet file with a vector column, or a PACS: "
                                  "dicomweb+http://HOST:PORT/dicom-web (QIDO-RS and WADO-RS)")
    s.add_argument("--collection", required=True)
    s.add_argument("--embedder", help="embedder of the collection (needed to create it; checked otherwise)")
    s.add_argument("--data", help="index into this data directory in-process, instead of a server (--target)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--remote-embed", dest="remote_embed", action="store_const", const=True,
                      help="send the file bytes; the server (or, with --data, the service in this process) decodes "
                           "and embeds (the default, except --data on a GPU host)")
    mode.add_argument("--local-embed", dest="remote_embed", action="store_const", const=False,
                      help="decode in parallel workers and embed here, send vectors (default for --data on a GPU host; "
                           "needs the weights here)")
    mode.add_argument("--ray", nargs="?", const="auto", metavar="auto|local|ADDRESS",
                      help="decode in Ray tasks and embed in Ray actors (pip install 'simdex[ray]'), upsert from here: "
                           "auto (the default) joins the cluster of RAY_ADDRESS or one running here, else starts a "
                           "local runtime on loopback; local always starts one; ADDRESS is a cluster's head HOST:PORT")
    s.add_argument("--ray-actors", type=int, default=0, help="--ray: embedding actors, each holding the model "
                                                             "(default: one per GPU, else one per two CPUs)")
    s.add_argument("--weights", help="weights file of the embedder for local embedding (default: torch hub cache)")
    s.add_argument("--device", help="where local embedding runs: cpu or cuda (default: the GPU when present)")
    s.add_argument("--workers", type=int, default=-1, help="decoding processes (default: cores - 1, at least 1)")
    s.add_argument("--batch-size", type=int, default=32, help="images per forward")
    s.add_argument("--chunk-size", type=int, default=256, help="items per upsert transaction")
    s.add_argument("--inflight", type=int, default=2, help="concurrent upserts with --remote-embed")
    s.add_argument("--all-frames", action="store_true", help="multi-frame DICOM: every frame (ids PATH#FRAME); "
                                                            "default: the middle frame")
    s.add_argument("--metric", default="cosine", choices=["l2", "ip", "cosine"], help="for a new collection")
    s.add_argument("--index", default="Flat", help="FAISS factory description for a new collection")
    s.add_argument("--ids-file", help=".npy source: text file with one id per row (default: row numbers)")
    s.add_argument("--vector-column", default="vector", help="Parquet source: the list-of-floats column")
    s.add_argument("--id-column", default="id", help="Parquet source: the id column (default: row numbers "
                                                     "when absent)")
    s.add_argument("--errors", help="error report, JSON lines, rewritten per run "
                                    "(default: ./COLLECTION.index-errors.jsonl; removed when nothing failed)")
    pacs = s.add_argument_group("PACS source (dicomweb+http://...)")
    pacs.add_argument("--modality", help="only instances of this modality (e.g. CT)")
    pacs.add_argument("--study", nargs="+", action="extend", metavar="UID",
                      help="only these studies (StudyInstanceUIDs; repeatable)")
    pacs.add_argument("--since", metavar="YYYYMMDD", help="only studies of this date or later (StudyDate)")
    pacs_auth_args(pacs)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    client_args(s)
    s.set_defaults(func=cmd_index)
