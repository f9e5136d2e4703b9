"""`simdex heads train|list|show|delete` and `simdex predict` (JSON lines out)."""
from __future__ import annotations

import json
from pathlib import Path

from simdex.cli.common import client_args, json_or_none, open_client
from simdex.defaults import HEAD_KIND, HEAD_TEST_FRACTION


def _head_json(h) -> str:
    return json.dumps(h.__dict__, ensure_ascii=False)


def _param_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(pairs) -> dict:
    """Repeated `--param KEY=VALUE` -> {key: value}, values read as JSON when they parse (C=0.5 is a float)."""
    params = {}
    for kv in pairs or []:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--param {kv!r}: expected KEY=VALUE")
        params[key] = _param_value(value)
    return params


def _train(c, args):
    labels = json.loads(Path(args.labels).read_text()) if args.labels else None
    return c.train_head(args.collection, args.head, kind=args.kind, label_field=args.label_field, labels=labels,
                        filter=json_or_none(args.filter), test_fraction=args.test_fraction,
                        balanced=args.balanced, target_collection=args.target_collection, **_params(args.param))


def cmd_heads(args) -> int:
    with open_client(args) as c:
        if args.action == "train":
            print(_head_json(_train(c, args)))
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

    with open_client(args) as c:
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


def add_parsers(sub) -> None:
    s = sub.add_parser("heads", help="train, list, show or delete linear heads (JSON lines out)")
    hs = s.add_subparsers(dest="action", required=True)
    t = hs.add_parser("train", help="train (or retrain: a new version of) a head on a collection's vectors")
    t.add_argument("collection")
    t.add_argument("head")
    t.add_argument("--kind", default=HEAD_KIND, choices=["logistic", "torch-logistic", "projection"])
    t.add_argument("--label-field", help="metadata field holding each item's label")
    t.add_argument("--labels", help='JSON file {"id": label, ...} (instead of --label-field)')
    t.add_argument("--target-collection", help="projection heads: the collection whose space to map into")
    t.add_argument("--filter", help="train only on the items matching this metadata filter (JSON)")
    t.add_argument("--test-fraction", type=float, default=HEAD_TEST_FRACTION,
                   help="held out for the metrics (stratified)")
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
