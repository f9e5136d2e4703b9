"""`simdex lookup QUERY --collection C`: the nearest stored images of a DICOM instance or image, as a
self-contained HTML page (--html) and/or JSON (--json). Pillow, pydicom and (with --data) the server are imported
on use."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from simdex.cli.common import DEFAULT_TARGET, open_client, weights_map
from simdex.defaults import MAX_MESSAGE_MB


def _open(args):
    """A remote client (--target), or an in-process one over the data directory --data."""
    if args.data:
        from simdex.clients import Client  # noqa: PLC0415

        return Client.local(args.data, weights=weights_map(args.weights) or None, device=args.device)
    return open_client(args)


def _summary(res) -> str:
    """A plain-text table of the hits, for a terminal."""
    from simdex.lookup.grouping import score_meaning  # noqa: PLC0415

    lines = [f"{res.query_name} in {res.collection!r} ({res.embedder}); score: {score_meaning(res.metric)}"]
    for h in res.hits:
        group = f"study {h.study or '-'} series {h.series or '-'}"
        shown = "" if h.thumbnail is not None else f"  [no image: {h.problem}]"
        lines.append(f"{h.rank:>3}  {h.distance:>10.4f}  {h.id}  {h.metadata.get('Modality', '-')}  {group}{shown}")
    return "\n".join(lines)


def cmd_lookup(args) -> int:
    from simdex.lookup.files import UnreadableFile, read_file  # noqa: PLC0415
    from simdex.lookup.page import lookup, render_html  # noqa: PLC0415

    query = Path(args.query)
    try:  # a pipe is fine here (the user named it, e.g. <(curl ...)), but never more than the size cap
        data = read_file(query, regular_only=False)
    except UnreadableFile as e:
        raise SystemExit(f"cannot read the query: {e.reason}") from None
    try:
        flt = json.loads(args.filter) if args.filter else None
    except ValueError as e:
        raise SystemExit(f"--filter {args.filter!r}: not JSON ({e})") from None
    with _open(args) as c:
        res = lookup(c, args.collection, data, args.k, root=args.root, query_name=query.name, filter=flt)
    if args.html:
        Path(args.html).write_text(render_html(res), encoding="utf-8")
    if args.json:
        print(json.dumps({**res.to_json(), "html": args.html}, ensure_ascii=False))
    else:
        print(_summary(res))
    if res.missing:
        print(f"{len(res.missing)} neighbour file(s) not shown (see 'missing' in --json); item paths are read "
              f"relative to {Path(args.root) if args.root else 'the current directory'}", file=sys.stderr)
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("lookup", help="nearest stored images of a DICOM instance or image, as HTML and/or JSON")
    s.add_argument("query", help="a DICOM Part-10 file or an image (PNG, JPEG ...)")
    s.add_argument("--collection", required=True, help="a collection created with an image embedder")
    s.add_argument("-k", type=int, default=8, help="neighbours to fetch")
    s.add_argument("--html", help="write the page (query, neighbours grouped by study and series) to this file")
    s.add_argument("--json", action="store_true", help="print the result as one JSON object")
    s.add_argument("--root", help="folder that the items' 'path' metadata is relative to (default: current dir)")
    s.add_argument("--filter", help='only hits matching this metadata filter (JSON), e.g. \'{"Modality": "CT"}\'')
    where = s.add_mutually_exclusive_group()
    where.add_argument("--target", default=os.environ.get("SIMDEX_TARGET", DEFAULT_TARGET),
                       help="server address (default $SIMDEX_TARGET or 127.0.0.1:50051)")
    where.add_argument("--data", help="search in-process in this data directory instead (no server may own it)")
    s.add_argument("--token-file")
    s.add_argument("--tls-ca", help="PEM root certificate: connect with TLS")
    s.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_MB)
    s.add_argument("--weights", action="append", metavar="NAME=FILE", help="with --data: an embedder's weights file")
    s.add_argument("--device", help="with --data: where the embedder runs (cpu or cuda)")
    s.set_defaults(func=cmd_lookup)
