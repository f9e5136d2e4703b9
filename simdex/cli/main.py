"""`simdex` command line: the parser assembled from one module per group of commands, and the dispatch.

Every command module is import-light (argparse tables and lazy imports): the bare install's CLI builds the whole
parser, and a command loads the SDK, the server, torch or faiss only when it runs."""
from __future__ import annotations

import argparse
import logging
import sys

from simdex.cli import (backup, cluster, collection, densenet, embed, heads, index, items, lookup, proto, seq2seq,
                        serve, web)
from simdex.defaults import quiet_openmp

# (sub-parsers) -> None for each group, in the order `simdex --help` lists them.
COMMANDS = (serve.add_parsers, collection.add_parsers, items.add_parsers, cluster.add_parsers, heads.add_parsers,
            items.add_count_parser, embed.add_parsers, densenet.add_parsers, seq2seq.add_parsers, index.add_parsers,
            lookup.add_parsers, web.add_parsers, proto.add_parsers, backup.add_parsers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simdex", description="simdex similarity-search service")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for add_parsers in COMMANDS:
        add_parsers(sub)
    return p


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run one command; 2 (and `simdex: CODE: message` on stderr) for a simdex error."""
    quiet_openmp()  # before any command can load torch or faiss
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    from simdex.errors import SimdexError  # noqa: PLC0415

    try:
        return args.func(args)
    except SimdexError as exc:
        print(f"simdex: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
