"""`simdex embedders` (the registry, with dims and whether weights are present) and `simdex embed` (files -> .npy).

`simdex embedders` reads this machine's registry and shows where each weights file is looked for (full paths: it is
the operator's own view); with --target it asks a server, which names each file without its folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from simdex.cli.common import client_args, open_client
from simdex.defaults import MAX_MESSAGE_MB


def cmd_embedders(args) -> int:
    if args.target:
        with open_client(args) as c:
            rows = [e.__dict__ for e in c.list_embedders()]
    else:
        from simdex.embedder.registry import EmbedderPool, specs  # noqa: PLC0415

        pool = EmbedderPool()
        rows = [{"name": s.name, "modality": s.modality, "dim": s.dim, "weights_present": pool.present(s.name),
                 "weights_file": pool.where(s.name), "description": s.description} for s in specs()]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    there = " on the server" if args.target else ""
    print(f"{'name':<20} {'modality':<8} {'dim':>5}  weights")
    for r in rows:
        where = "random (tests)" if not r["weights_file"] else (
            (f"present{there}: " if r["weights_present"] else f"MISSING{there}: ") + r["weights_file"])
        print(f"{r['name']:<20} {r['modality']:<8} {r['dim']:>5}  {where}")
    return 0


def cmd_embed(args) -> int:
    import numpy as np  # noqa: PLC0415

    files = [Path(f) for f in args.files]
    with open_client(args) as c:
        if args.text:
            e = c.embed_items(args.embedder, texts=list(args.files))
        else:
            e = c.embed_items(args.embedder, images=[f.read_bytes() for f in files], all_frames=args.all_frames)
    np.save(args.out, e.vectors)
    for r in range(len(e.vectors)):
        print(json.dumps({"row": r, "input": args.files[e.item_index[r]], "frame": int(e.frame_index[r]),
                          "metadata": e.metadata[r]}))
    print(f"wrote {e.vectors.shape} float32 to {args.out} (weights {e.fingerprint})", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("embedders", help="registered embedders: dims and whether their weights are present")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--target", help="ask this server instead of reading the local registry")
    s.add_argument("--token-file")
    s.add_argument("--tls-ca")
    s.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_MB)
    s.set_defaults(func=cmd_embedders)

    s = sub.add_parser("embed", help="embed image/DICOM files (or --text sentences) on the server into a .npy file")
    s.add_argument("files", nargs="+", help="image or DICOM files (sentences with --text)")
    s.add_argument("--embedder", required=True)
    s.add_argument("--out", required=True, help=".npy file for the (rows, dim) float32 vectors")
    s.add_argument("--text", action="store_true", help="the arguments are sentences, not files")
    s.add_argument("--all-frames", action="store_true", help="multi-frame DICOM: one row per frame")
    client_args(s)
    s.set_defaults(func=cmd_embed)
