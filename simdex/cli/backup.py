"""`simdex backup` and `simdex restore`: a consistent copy of a store taken while it serves (from a running server
over gRPC, or from a data directory), and its return into an empty store (service/backup.py has the format)."""
from __future__ import annotations

import json

from simdex.cli.common import client_args, open_client


def summary(out: str, manifest: dict) -> str:
    """One JSON line: where the backup is and what it holds."""
    cols = manifest["collections"]
    return json.dumps({"backup": out, "collections": len(cols), "items": sum(c["items"] for c in cols),
                       "heads": len(manifest["heads"]), "seq": {c["name"]: c["seq"] for c in cols},
                       "index_snapshots": sum("snapshot_seq" in c for c in cols),
                       "bytes": sum(f["bytes"] for f in manifest["files"].values())})


def cmd_backup(args) -> int:
    if bool(args.target) == bool(args.data):
        raise SystemExit("simdex backup needs one of --target HOST:PORT (a running server) or --data DIR (a data "
                         "directory, with --db for PostgreSQL)")
    if args.db and not args.data:
        raise SystemExit("--db goes with --data (a server knows its own database)")
    if args.target:
        with open_client(args) as c:
            manifest = c.backup(args.out)
    else:
        from simdex.service.backup import backup_data  # noqa: PLC0415 - the server extra, only for this command

        manifest = backup_data(args.out, args.data, args.db)
    print(summary(args.out, manifest))
    return 0


def cmd_restore(args) -> int:
    from simdex.service.backup import restore  # noqa: PLC0415

    print(summary(args.backup, restore(args.backup, args.data, args.db)))
    return 0


def add_parsers(sub) -> None:
    b = sub.add_parser("backup", help="copy a store, while it serves, into a new folder")
    b.add_argument("out", metavar="OUT", help="the new backup folder")
    b.add_argument("--data", help="the data directory of the store (instead of --target)")
    b.add_argument("--db", help="its database URL when it is not the SQLite file in --data")
    client_args(b)
    b.set_defaults(func=cmd_backup, target=None)  # no default server: say which store
    r = sub.add_parser("restore", help="bring a backup back into an empty store (no server running on it)")
    r.add_argument("backup", metavar="OUT", help="the backup folder")
    r.add_argument("--data", required=True, help="the data directory of the empty store")
    r.add_argument("--db", help="its database URL (default: SQLite in --data)")
    r.set_defaults(func=cmd_restore)
