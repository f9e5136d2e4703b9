"""`simdex upsert` (a .npy file, resumable), `simdex search`, `simdex get` and `simdex count` (JSON lines out)."""
from __future__ import annotations

import json
from pathlib import Path

from simdex.cli.common import client_args, json_or_none, open_client, progress

UPLOAD_CHUNK = 4096  # rows per upsert call: each call is one acknowledged transaction


def _read_lines(path: str | None) -> list[str] | None:
    if not path:
        return None
    return Path(path).read_text().splitlines()


def _not_stored(c, collection: str, ids: list[str], x, metas: list[dict]) -> list[int]:
    """Positions of the rows not already stored with the same content (what an interrupted run left to do)."""
    from simdex.wire import canonical_json, content_hash  # noqa: PLC0415

    stored = {it.id: it.content_hash for it in c.get(collection, ids, with_vectors=False, ignore_missing=True)}
    return [j for j, id_ in enumerate(ids)
            if stored.get(id_) != content_hash(x[j].tobytes(), canonical_json(metas[j]))]


def cmd_upsert(args) -> int:
    import numpy as np  # noqa: PLC0415

    x = np.load(args.vectors, mmap_mode="r", allow_pickle=False)
    n = len(x)
    ids = _read_lines(args.ids) or [str(i) for i in range(n)]
    metas = _read_lines(args.metadata)
    if len(ids) != n or (metas is not None and len(metas) != n):
        raise SystemExit(f"{n} vectors, {len(ids)} ids, {len(metas) if metas else 0} metadata lines: must match")
    bar = progress(n, f"upsert {args.collection}")
    done = skipped = 0
    with open_client(args) as c:
        for i in range(0, n, args.chunk):
            part_ids = ids[i:i + args.chunk]
            part_x = np.ascontiguousarray(x[i:i + args.chunk], dtype="<f4")
            part_meta = [json.loads(m) for m in metas[i:i + args.chunk]] if metas else [{}] * len(part_ids)
            if args.resume:  # skip rows already stored with the same content (an earlier, interrupted run)
                todo = _not_stored(c, args.collection, part_ids, part_x, part_meta)
                skipped += len(part_ids) - len(todo)
                part_ids, part_x, part_meta = [part_ids[j] for j in todo], part_x[todo], [part_meta[j] for j in todo]
            if part_ids:
                done += c.upsert(args.collection, part_ids, part_x, part_meta)
            if bar:
                bar.update(min(args.chunk, n - i))
    if bar:
        bar.close()
    print(json.dumps({"upserted": done, "skipped": skipped}))
    return 0


def cmd_search(args) -> int:
    import numpy as np  # noqa: PLC0415

    xq = np.load(args.queries, allow_pickle=False)
    with open_client(args) as c:
        r = c.search(args.collection, xq, args.k, radius=args.radius, filter=json_or_none(args.filter),
                     params=json_or_none(args.params), include_metadata=args.metadata)
    for i, ids in enumerate(r.ids):
        d = r.distances[i][: len(ids)]
        row = {"query": i, "ids": ids, "distances": [float(v) for v in d]}
        if r.metadata is not None:
            row["metadata"] = r.metadata[i]
        print(json.dumps(row))
    return 0


def cmd_get(args) -> int:
    with open_client(args) as c:
        for it in c.get(args.collection, args.ids, with_vectors=not args.no_vectors):
            row = {"id": it.id, "metadata": it.metadata}
            if it.vector is not None:
                row["vector"] = [float(v) for v in it.vector]
            print(json.dumps(row))
    return 0


def cmd_count(args) -> int:
    with open_client(args) as c:
        print(c.count(args.collection, json_or_none(args.filter)))
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("upsert", help="upload vectors from a .npy file")
    s.add_argument("collection")
    s.add_argument("vectors", help=".npy file of shape (n, d)")
    s.add_argument("--ids", help="text file, one id per line (default: row numbers)")
    s.add_argument("--metadata", help="JSON lines file, one object per row")
    s.add_argument("--chunk", type=int, default=UPLOAD_CHUNK, help="rows per transaction")
    s.add_argument("--resume", action="store_true",
                   help="skip rows already stored with the same vector and metadata (continue an interrupted run)")
    client_args(s)
    s.set_defaults(func=cmd_upsert)

    s = sub.add_parser("search", help="nearest neighbours of the rows of a .npy file (JSON lines out)")
    s.add_argument("collection")
    s.add_argument("queries", help=".npy file of shape (nq, d)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--radius", type=float)
    s.add_argument("--filter", help='JSON, e.g. \'{"modality": "CT"}\'')
    s.add_argument("--params", help='JSON, e.g. \'{"nprobe": 32}\'')
    s.add_argument("--metadata", action="store_true", help="include each hit's metadata")
    client_args(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("get", help="items by id (JSON lines out)")
    s.add_argument("collection")
    s.add_argument("ids", nargs="+")
    s.add_argument("--no-vectors", action="store_true")
    client_args(s)
    s.set_defaults(func=cmd_get)


def add_count_parser(sub) -> None:
    s = sub.add_parser("count", help="number of items (matching --filter)")
    s.add_argument("collection")
    s.add_argument("--filter")
    client_args(s)
    s.set_defaults(func=cmd_count)
