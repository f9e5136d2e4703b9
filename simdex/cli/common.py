"""What the command modules share: the connection options, the remote client they open, `--weights NAME=FILE`
and a progress bar when tqdm is installed. Import-light: the bare install's CLI builds its parser from these."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from simdex.defaults import MAX_MESSAGE_MB

DEFAULT_TARGET = "127.0.0.1:50051"


def client_args(sp) -> None:
    """--target, --token-file, --tls-ca and --max-message-mb: how a command reaches the server."""
    sp.add_argument("--target", default=os.environ.get("SIMDEX_TARGET", DEFAULT_TARGET))
    sp.add_argument("--token-file")
    sp.add_argument("--tls-ca", help="PEM root certificate: connect with TLS")
    sp.add_argument("--max-message-mb", type=float, default=MAX_MESSAGE_MB)


def open_client(args):
    """A remote Client from the options client_args added."""
    from simdex.clients import Client  # noqa: PLC0415

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    root = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return Client(args.target, token=token, tls=bool(root), root_certificates=root,
                  max_message_mb=args.max_message_mb)


def pacs_auth_args(group) -> None:
    """--pacs-token-file, --pacs-user and --pacs-password-file: how a command logs in to a PACS."""
    group.add_argument("--pacs-token-file", help="file holding a bearer token for the PACS")
    group.add_argument("--pacs-user", help="user for the PACS's HTTP basic authentication, with --pacs-password-file")
    group.add_argument("--pacs-password-file", help="file holding the password of --pacs-user")


def pacs_auth(args):
    """The dicomweb.PacsAuth of the options pacs_auth_args added."""
    from simdex.jobs.dicomweb import PacsAuth  # noqa: PLC0415

    return PacsAuth.from_files(args.pacs_token_file, args.pacs_user, args.pacs_password_file)


def json_or_none(text: str | None):
    """A JSON option's value (a filter, search params), None when the option was not given."""
    return json.loads(text) if text else None


def weights_map(items) -> dict[str, str]:
    """Repeated `--weights NAME=FILE` options -> {name: file}."""
    weights = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights takes NAME=FILE, got {item!r}")
        weights[name] = path
    return weights


def progress(total: int, desc: str):
    """A tqdm bar on stderr counting vectors, or None on the light client install (no tqdm)."""
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="vec", file=sys.stderr, disable=None)
