"""`simdex proto [--out DIR]`: the service contract (.proto, with its comments) for clients in other languages.

The package ships the file (`simdex/proto/simdex.proto`, copied from proto/simdex/v1 by scripts/gen_proto.py), so
this works on the bare install; reflection serves the descriptors but not the comments, which carry the packing,
distance and padding rules."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

SHIPPED = "simdex.proto"  # in the package simdex.proto, beside the generated stubs
LAYOUT = Path("simdex") / "v1" / "simdex.proto"  # under --out: the path its package `simdex.v1` implies


def proto_text() -> str:
    """The .proto the installed package was generated from."""
    return resources.files("simdex.proto").joinpath(SHIPPED).read_text(encoding="utf-8")


def cmd_proto(args) -> int:
    text = proto_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.out) / LAYOUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(path)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("proto", help="print the service's .proto (or write it under --out DIR) for other languages")
    s.add_argument("--out", metavar="DIR", help=f"write DIR/{LAYOUT.as_posix()} instead of printing it")
    s.set_defaults(func=cmd_proto)
