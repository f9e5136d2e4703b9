"""`simdex serve`: run the gRPC server. The server side is imported only when this command runs, so the rest of
the CLI works on the bare install; there, this command says in one line which extras to install."""
from __future__ import annotations

import argparse

from simdex import limits as lim
from simdex.defaults import MAX_MESSAGE_MB, SEARCH_STREAMS, SERVER_STREAM_IDLE_S, SNAPSHOT_INTERVAL_S

EXTRAS_HINT = ("simdex serve needs the server extra: pip install 'simdex[server,cpu]' "
               "(or 'simdex[server,gpu]' on a GPU host)")


def missing_module(exc: ImportError) -> str | None:
    """The module whose absence caused `exc` (followed through re-raised ImportErrors, as the FAISS import's)."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, ImportError) and e.name:
            return e.name
        e = e.__cause__
    return None


def _not_negative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _idle_limit(text: str) -> float:
    """0 (never), or at least a second: a shorter limit would cut streams between an answer and the next search."""
    x = float(text)
    if not (x == 0 or 1 <= x < float("inf")):  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 (never) or a finite number of seconds >= 1, got {text}")
    return x


def cmd_serve(args) -> int:
    try:
        from simdex.server.app import Tls, serve  # noqa: PLC0415
    except ImportError as exc:
        name = missing_module(exc)
        if name is None or name.split(".")[0] == "simdex":  # a broken simdex, not a missing extra: the traceback
            raise
        raise SystemExit(f"{EXTRAS_HINT}; missing module: {name}") from None
    from simdex.cli.common import weights_map  # noqa: PLC0415

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    tls = Tls.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
    limits = lim.Limits(**{name: getattr(args, name) for name, *_ in lim.flags()})
    serve(args.data, args.host, args.port, args.db, args.token_file, tls, args.max_message_mb,
          args.snapshot_interval, weights_map(args.weights), args.device, limits=limits, tokens_file=args.tokens_file,
          metrics_port=args.metrics_port, metrics_host=args.metrics_host, search_backend=args.search_backend,
          search_streams=args.search_streams, stream_idle_s=args.stream_idle_s)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--data", default="./simdex-data", help="data directory (SQLite database and index snapshots)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data)")
    s.add_argument("--token-file", help="require 'authorization: Bearer <token>' with the token in this file")
    s.add_argument("--tokens-file", help="scoped tokens (JSON: name, token, access read|write|admin, collections); "
                   "not with --token-file")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at /metrics on this port (default: off)")
    s.add_argument("--metrics-host", default="127.0.0.1", help="bind address of the metrics endpoint (loopback by "
                   "default)")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_MB)
    s.add_argument("--snapshot-interval", type=float, default=SNAPSHOT_INTERVAL_S,
                   help="seconds between index snapshots")
    s.add_argument("--search-backend", choices=("auto", "faiss", "torch"),  # absent: index.torch_ann reads the env
                   help="what searches exact collections (Flat, and kinds not yet trained): torch keeps their vectors "
                   "on the GPU (or CPU); auto = torch when torch sees CUDA and faiss has no GPU build "
                   "(env SIMDEX_SEARCH_BACKEND; default auto)")
    s.add_argument("--search-streams", type=_not_negative, default=SEARCH_STREAMS,
                   help="SearchStream calls open at once (clients send stacked searches over them), each holding a "
                   f"thread of its own besides the workers; beyond it clients send Search calls (default {SEARCH_STREAMS})")
    s.add_argument("--stream-idle-s", type=_idle_limit, default=SERVER_STREAM_IDLE_S,
                   help="cancel a SearchStream that waits this long for its next search, freeing its place (0: never; "
                   f"default {SERVER_STREAM_IDLE_S:g})")
    s.add_argument("--weights", action="append", metavar="NAME=FILE",
                   help="weights file of an embedder (repeatable); default: the torch hub cache ($TORCH_HOME)")
    s.add_argument("--device", help="where embedders run: cpu or cuda (default: the GPU when there is one)")
    for name, flag, kind, default, text in lim.flags():
        s.add_argument(flag, dest=name, type=kind, default=default, help=f"{text} (default {default})")
    s.set_defaults(func=cmd_serve)
