"""`simdex web --target HOST:PORT --port 8080`: the lookup web page (simdex.web) over a running simdex server,
served by uvicorn on loopback unless --host says otherwise. FastAPI, uvicorn and dicomweb-client (the `web` extra)
are imported when the command runs, so the CLI of an install without them still builds its parser."""
from __future__ import annotations

from simdex.cli.common import client_args, open_client, pacs_auth, pacs_auth_args
from simdex.defaults import MAX_UPLOAD_MB


def _pacs(args):
    """The StudyPacs of --pacs with its credentials, or None; PACS flags without --pacs are refused."""
    if not args.pacs:
        if args.pacs_user or args.pacs_password_file or args.pacs_token_file:
            raise SystemExit("--pacs-user, --pacs-password-file and --pacs-token-file need --pacs")
        return None
    from simdex.web.pacs import StudyPacs  # noqa: PLC0415

    return StudyPacs(args.pacs, pacs_auth(args))


def cmd_web(args) -> int:
    try:
        import uvicorn  # noqa: PLC0415

        from simdex.web.app import create_app  # noqa: PLC0415
    except ImportError as e:
        raise SystemExit(f"simdex web needs the web extra (pip install 'simdex[web]'): {e}") from None
    pacs = _pacs(args)
    with open_client(args) as client:
        try:
            app = create_app(client, pacs=pacs, viewer_url=args.viewer_url, root=args.root,
                             max_upload_mb=args.max_upload_mb)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("web", help="the lookup web page: drop a DICOM/PNG/JPEG or give a StudyInstanceUID, see "
                                   "similar stored studies")
    client_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--pacs", help="a DICOMweb PACS, dicomweb+http://HOST:PORT/dicom-web: StudyInstanceUID queries "
                                  "and thumbnails rendered by the PACS")
    pacs_auth_args(s)
    s.add_argument("--viewer-url", help="link opening a study in the PACS viewer, {study} is replaced by its "
                                        "StudyInstanceUID, e.g. 'http://pacs:8042/ui/app/#/studies?"
                                        "StudyInstanceUID={study}'")
    s.add_argument("--root", help="folder that the items' 'path' metadata is relative to (default: current dir)")
    s.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest file accepted (413 above)")
    s.set_defaults(func=cmd_web)
