"""`simdex collections create|list|get|delete`."""
from __future__ import annotations

import json

from simdex.cli.common import client_args, open_client


def cmd_collections(args) -> int:
    if args.action != "list" and not args.name:
        raise SystemExit("collections create|get|delete need a NAME")
    if args.action == "create" and not args.dim:
        raise SystemExit("collections create needs --dim")
    with open_client(args) as c:
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


def add_parsers(sub) -> None:
    s = sub.add_parser("collections", help="create, list, get or delete collections")
    s.add_argument("action", choices=["create", "list", "get", "delete"])
    s.add_argument("name", nargs="?")
    s.add_argument("--dim", type=int)
    s.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    s.add_argument("--index", default="Flat", help="FAISS factory description (Flat, HNSW32, IVF1024,Flat ...)")
    client_args(s)
    s.set_defaults(func=cmd_collections)
