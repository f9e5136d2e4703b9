"""`simdex` command line: serve, collections, upsert, search, get, count, cluster, heads, predict."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from simdex.wire import canonical_json, content_hash

EXTRA_COMMANDS = ("simdex.cli.embed", "simdex.cli.densenet", "simdex.cli.seq2seq",
                  "simdex.cli.index", "simdex.cli.lookup")
UPLOAD_CHUNK = 4096  # rows per upsert call: each call is one acknowledged transaction


def _client(args):
    from simdex.clients import Client  # noqa: PLC0415

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return Client(args.target, token=token, tls=bool(root), root_certificates=root,
                  max_message_mb=args.max_message_mb)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:  # the light client install has no tqdm
        return None
    return tqdm(total=total, desc=desc, unit="vec", file=sys.stderr, disable=None)


def weights_map(items) -> dict[str, str]:
    """Repeated `--weights NAME=FILE` options -> {name: file}."""
    weights = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights takes NAME=FILE, got {item!r}")
        weights[name] = path
    return weights


def cmd_serve(args) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss/torch load: no busy-waiting threads
    from simdex.server.app import Tls, serve  # noqa: PLC0415

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    tls = Tls.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
    serve(args.data, args.host, args.port, args.db, args.token_file, tls, args.max_message_mb,
          args.snapshot_interval, weights_map(args.weights), args.device)
    return 0


def cmd_collections(args) -> int:
    with _client(args) as c:
        if args.action == "create":
            info = c.create_collection(args.name, args.dim, args.metric, args.index)
            print(json.dumps(info.__dict__))
        elif args.action == "list":
            for info in c.list_collections():
                print(json.dumps(info.__dict__))
        elif args.action == "get":
            print(json.dumps(c.get_collection(args.name).__dict__))
        else:
            c.delete_collection(args.name)
            print(json.dumps({"deleted": args.name}))
    return 0


def _read_lines(path: str | None) -> list[str] | None:
    if not path:
        return None
    return Path(path).read_text().splitlines()


def cmd_upsert(args) -> int:
    import numpy as np  # noqa: PLC0415

    x = np.load(args.vectors, mmap_mode="r", allow_pickle=False)
    n = len(x)
    ids = _read_lines(args.ids) or [str(i) for i in range(n)]
    metas = _read_lines(args.metadata)
    if len(ids) != n or (metas is not None and len(metas) != n):
        raise SystemExit(f"{n} vectors, {len(ids)} ids, {len(metas) if metas else 0} metadata lines: must match")
    bar = _progress(n, f"upsert {args.collection}")
    done = skipped = 0
    with _client(args) as c:
        for i in range(0, n, args.chunk):
            part_ids = ids[i:i + args.chunk]
            part_x = np.ascontiguousarray(x[i:i + args.chunk], dtype="<f4")
            part_meta = [json.loads(m) for m in metas[i:i + args.chunk]] if metas else [{}] * len(part_ids)
            if args.resume:  # skip rows already stored with the same content (an earlier, interrupted run)
                stored = {it.id: it.content_hash
                          for it in c.get(args.collection, part_ids, with_vectors=False, ignore_missing=True)}
                todo = [j for j, id_ in enumerate(part_ids)
                        if stored.get(id_) != content_hash(part_x[j].tobytes(), canonical_json(part_meta[j]))]
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
    flt = json.loads(args.filter) if args.filter else None
    params = json.loads(args.params) if args.params else None
    with _client(args) as c:
        r = c.search(args.collection, xq, args.k, radius=args.radius, filter=flt, params=params,
                     include_metadata=args.metadata)
    for i, ids in enumerate(r.ids):
        d = r.distances[i][: len(ids)]
        row = {"query": i, "ids": ids, "distances": [float(v) for v in d]}
        if r.metadata is not None:
            row["metadata"] = r.metadata[i]
        print(json.dumps(row))
    return 0


def cmd_get(args) -> int:
    with _client(args) as c:
        for it in c.get(args.collection, args.ids, with_vectors=not args.no_vectors):
            row = {"id": it.id, "metadata": it.metadata}
            if it.vector is not None:
                row["vector"] = [float(v) for v in it.vector]
            print(json.dumps(row))
    return 0


def cmd_count(args) -> int:
    with _client(args) as c:
        print(c.count(args.collection, json.loads(args.filter) if args.filter else None))
    return 0


def cmd_cluster(args) -> int:
    with _client(args) as c:
        r = c.cluster(args.collection, args.bandwidth, filter=json.loads(args.filter) if args.filter else None,
                      kernel=args.kernel, bin_seeding=args.bin_seeding, cluster_all=not args.no_cluster_all,
                      max_seeds=args.max_seeds or None)
        if args.labels:
            with open(args.labels, "w") as fh:
                for id_, lab in zip(r.ids, r.labels.tolist()):
                    fh.write(json.dumps({"id": id_, "cluster": lab}) + "\n")
        if args.plot:
            from simdex.cli.plot import cluster_scatter  # noqa: PLC0415 - matplotlib only when asked

            cluster_scatter(c, args.collection, r, args.plot, args.plot_points)
    print(json.dumps({"bandwidth": r.bandwidth, "n_iter": r.n_iter, "n_points": len(r.ids),
                      "unclustered": int((r.labels < 0).sum()),
                      "clusters": [{"label": k.label, "size": k.size, "representatives": k.representatives}
                                   for k in r.clusters]}))
    return 0


def _head_json(h) -> str:
    return json.dumps(h.__dict__, ensure_ascii=False)


def _param_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_heads(args) -> int:
    with _client(args) as c:
        if args.action == "train":
            labels = json.loads(Path(args.labels).read_text()) if args.labels else None
            params = {}
            for kv in args.param or []:
                key, sep, value = kv.partition("=")
                if not sep:
                    raise SystemExit(f"--param {kv!r}: expected KEY=VALUE")
                params[key] = _param_value(value)
            h = c.train_head(args.collection, args.head, kind=args.kind, label_field=args.label_field,
                             labels=labels, filter=json.loads(args.filter) if args.filter else None,
                             test_fraction=args.test_fraction, balanced=args.balanced,
                             target_collection=args.target_collection, **params)
            print(_head_json(h))
        elif args.action == "list":
            for h in c.list_heads(args.collection):
                print(_head_json(h))
        elif args.action == "show":
            print(_head_json(c.get_head(args.head)))
        else:
            print(json.dumps({"deleted": args.head, "versions": c.delete_head(args.head)}))
    return 0


def cmd_predict(args) -> int:
    import numpy as np  # noqa: PLC0415

    with _client(args) as c:
        if args.vectors:
            p = c.predict(args.head, vectors=np.load(args.vectors, allow_pickle=False))
        else:
            p = c.predict(args.head, ids=args.ids)
    if args.out:  # projections, or probabilities, as a .npy file
        np.save(args.out, p.vectors if p.vectors is not None else p.probabilities)
    names = args.ids or [None] * len(p)
    for i, name in enumerate(names):
        row: dict = {"input": i} if name is None else {"id": name}
        if p.labels is not None:
            row.update(label=p.labels[i], probability=float(p.probabilities[i].max()))
        elif not args.out:
            row["vector"] = [float(v) for v in p.vectors[i]]
        print(json.dumps(row, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simdex", description="simdex similarity-search service")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def client_args(sp):
        sp.add_argument("--target", default=os.environ.get("SIMDEX_TARGET", "127.0.0.1:50051"))
        sp.add_argument("--token-file")
        sp.add_argument("--tls-ca", help="PEM root certificate: connect with TLS")
        sp.add_argument("--max-message-mb", type=float, default=64)

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--data", default="./simdex-data", help="data directory (SQLite database and index snapshots)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data)")
    s.add_argument("--token-file", help="require 'authorization: Bearer <token>' with the token in this file")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--max-message-mb", type=float, default=64)
    s.add_argument("--snapshot-interval", type=float, default=30.0, help="seconds between index snapshots")
    s.add_argument("--weights", action="append", metavar="NAME=FILE",
                   help="weights file of an embedder (repeatable); default: the torch hub cache ($TORCH_HOME)")
    s.add_argument("--device", help="where embedders run: cpu or cuda (default: the GPU when there is one)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("collections", help="create, list, get or delete collections")
    s.add_argument("action", choices=["create", "list", "get", "delete"])
    s.add_argument("name", nargs="?")
    s.add_argument("--dim", type=int)
    s.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    s.add_argument("--index", default="Flat", help="FAISS factory description (Flat, HNSW32, IVF1024,Flat ...)")
    client_args(s)
    s.set_defaults(func=cmd_collections)

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

    s = sub.add_parser("cluster", help="mean shift clusters of a collection (JSON summary out)")
    s.add_argument("collection")
    s.add_argument("--bandwidth", type=float, help="kernel radius (default: estimated)")
    s.add_argument("--kernel", default="flat", choices=["flat", "gaussian"])
    s.add_argument("--filter", help="cluster only the items matching this metadata filter (JSON)")
    s.add_argument("--bin-seeding", action="store_true")
    s.add_argument("--no-cluster-all", action="store_true", help="leave points beyond every mode's reach as -1")
    s.add_argument("--max-seeds", type=int, default=1000, help="sampled seeds (0: every point)")
    s.add_argument("--labels", help="write each member's cluster as JSON lines to this file")
    s.add_argument("--plot", help="write a 2-D PCA scatter coloured by cluster to this PNG")
    s.add_argument("--plot-points", type=int, default=5000, help="members drawn in the plot (a sample)")
    client_args(s)
    s.set_defaults(func=cmd_cluster)

    s = sub.add_parser("heads", help="train, list, show or delete linear heads (JSON lines out)")
    hs = s.add_subparsers(dest="action", required=True)
    t = hs.add_parser("train", help="train (or retrain: a new version of) a head on a collection's vectors")
    t.add_argument("collection")
    t.add_argument("head")
    t.add_argument("--kind", default="logistic", choices=["logistic", "torch-logistic", "projection"])
    t.add_argument("--label-field", help="metadata field holding each item's label")
    t.add_argument("--labels", help='JSON file {"id": label, ...} (instead of --label-field)')
    t.add_argument("--target-collection", help="projection heads: the collection whose space to map into")
    t.add_argument("--filter", help="train only on the items matching this metadata filter (JSON)")
    t.add_argument("--test-fraction", type=float, default=0.2, help="held out for the metrics (stratified)")
    t.add_argument("--balanced", action="store_true", help="weight classes inversely to their frequency")
    t.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="estimator parameter, repeatable: C=0.5, solver=lbfgs, epochs=50, alpha=10, seed=1 ...")
    client_args(t)
    t = hs.add_parser("list", help="every head (of --collection)")
    t.add_argument("--collection")
    client_args(t)
    for action in ("show", "delete"):
        t = hs.add_parser(action, help=f"{action} a head")
        t.add_argument("head")
        client_args(t)
    s.set_defaults(func=cmd_heads)

    s = sub.add_parser("predict", help="run a head on vectors or stored items (JSON lines out)")
    s.add_argument("head")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--vectors", help=".npy file of shape (n, dim) in the head's collection space")
    g.add_argument("--ids", nargs="+", help="ids of items of the head's collection")
    s.add_argument("--out", help="also write probabilities (or projected vectors) to this .npy file")
    client_args(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("count", help="number of items (matching --filter)")
    s.add_argument("collection")
    s.add_argument("--filter")
    client_args(s)
    s.set_defaults(func=cmd_count)

    # Command families in modules of their own; each has add_parsers(sub, client_args) and imports torch lazily.
    import importlib  # noqa: PLC0415

    for mod in EXTRA_COMMANDS:
        importlib.import_module(mod).add_parsers(sub, client_args)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "collections" and args.action != "list" and not args.name:
        raise SystemExit("collections create|get|delete need a NAME")
    if args.command == "collections" and args.action == "create" and not args.dim:
        raise SystemExit("collections create needs --dim")
    from simdex.errors import SimdexError  # noqa: PLC0415

    try:
        return args.func(args)
    except SimdexError as exc:
        print(f"simdex: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
