"""`simdex index dicomweb+http://HOST:PORT/dicom-web`: a PACS as an indexing source, over DICOMweb (dicomweb-client).

QIDO-RS lists the instances (all of them, or those of `--study` UIDs, narrowed by `--modality` and `--since`); each
becomes a `FileItem` whose id is its SOP Instance UID ('UID#frame' per frame with --all-frames, as for files) and whose
`origin` is its WADO-RS URL. Before anything is fetched, the collection is asked which of those ids it holds: DICOM
instances never change under their UID, so a stored one is skipped without a WADO-RS request and a rerun fetches only
what is new (or failed). The others are fetched with WADO-RS, a few at a time and in listing order, and planned from
the Part-10 bytes the PACS returned (the content hash is their sha256), then go through the same pipelines as files:
the remote-embed one sends the bytes; the local-embed one reads them from a spool file in a temporary folder
(removed at the end of the run), since its decoding workers were forked before the fetches.

An instance that cannot be fetched is reported and counted failed (the next run tries it again); a PACS that cannot
be reached, or refuses the credentials, stops the run with an error naming it. Credentials come from files
(`PacsAuth.from_files`: a bearer token, or a user and a password) and never appear in messages."""
from __future__ import annotations

import datetime
import itertools
import logging
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from simdex.errors import (FailedPrecondition, InvalidArgument, PermissionDenied, SimdexError, Unauthenticated,
                           Unavailable)
from simdex.jobs import sources as src
from simdex.jobs.pipeline import Job

LOG = logging.getLogger(__name__)

SCHEME = "dicomweb+"      # dicomweb+http://HOST:PORT/PATH or dicomweb+https://...
PAGE = 1000               # QIDO-RS results per request
FETCHERS = 4              # concurrent WADO-RS retrievals
TIMEOUT_S = 60.0          # per HTTP request
UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LEN = 64          # DICOM PS3.5 9.1
MODALITY_RE = re.compile(r"[A-Z0-9_ ]{1,16}")  # a CS value
# WADO-RS Retrieve Instance in the transfer syntax the PACS holds (PS3.18 8.7.3.5.2)
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# the tags of a QIDO-RS reply row (DICOM JSON, PS3.18 F.2), read with tag_text and tag_int
STUDY, SERIES, SOP, FRAMES = "0020000D", "0020000E", "00080018", "00280008"
SERIES_NUMBER, INSTANCE_NUMBER = "00200011", "00200013"


def is_dicomweb(source: str) -> bool:
    return str(source).startswith(SCHEME)


def dicomweb_url(source: str) -> str:
    """'dicomweb+http://h:p/dicom-web' -> 'http://h:p/dicom-web' (InvalidArgument for anything else)."""
    rest = source[len(SCHEME):] if is_dicomweb(source) else ""
    if not re.fullmatch(r"https?://[^/\s:@]+(:\d+)?(/\S*)?", rest):
        raise InvalidArgument(f"source {source!r}: expected dicomweb+http://HOST:PORT/PATH or dicomweb+https://...")
    return rest.rstrip("/")


def check_uid(uid: str, what: str) -> str:
    """`uid` if it is a DICOM UID (digits and dots, at most 64 characters); InvalidArgument naming it otherwise."""
    if not isinstance(uid, str) or len(uid) > MAX_UID_LEN or not UID_RE.fullmatch(uid):
        raise InvalidArgument(f"{what} {str(uid)[:80]!r} is not a DICOM UID (digits and dots, at most "
                              f"{MAX_UID_LEN} characters)")
    return uid


@dataclass(frozen=True)
class PacsAuth:
    """How to authenticate to the PACS: a bearer `token`, or basic `user` and `password`, or nothing."""
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_files(cls, token_file: str | None = None, user: str | None = None,
                   password_file: str | None = None) -> "PacsAuth":
        """The credentials of --pacs-token-file, or of --pacs-user with --pacs-password-file (first line of each
        file, surrounding whitespace dropped)."""
        if token_file and (user or password_file):
            raise InvalidArgument("--pacs-token-file or --pacs-user/--pacs-password-file, not both")
        if bool(user) != bool(password_file):
            raise InvalidArgument("--pacs-user and --pacs-password-file go together")
        if token_file:
            return cls(token=_secret(token_file, "--pacs-token-file"))
        if user:
            return cls(user=user, password=_secret(password_file, "--pacs-password-file"))
        return cls()


def _secret(path: str, flag: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{flag} {path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    if not lines or not lines[0].strip():
        raise InvalidArgument(f"{flag} {path}: the file is empty")
    return lines[0].strip()


@dataclass(frozen=True)
class PacsOptions:
    """Which instances to index: those of `studies` (all when empty) with `modality`, studied on or after `since`
    (YYYYMMDD); and the PACS credentials. Checked when made."""
    modality: str | None = None
    studies: tuple[str, ...] = ()
    since: str | None = None
    auth: PacsAuth = PacsAuth()

    def __post_init__(self):
        if self.modality is not None and not MODALITY_RE.fullmatch(self.modality):
            raise InvalidArgument(f"--modality {self.modality!r}: expected a DICOM modality such as CT or MR "
                                  "(capitals and digits, at most 16)")
        for uid in self.studies:
            check_uid(uid, "--study")
        if self.since is not None:
            try:
                ok = len(self.since) == 8 and datetime.datetime.strptime(self.since, "%Y%m%d")
            except ValueError:
                ok = False
            if not ok:
                raise InvalidArgument(f"--since {self.since!r}: expected a date YYYYMMDD")

    def filters(self) -> dict[str, str]:
        """QIDO-RS matching keys: Modality, and StudyDate as the open range 'since-'."""
        out = {}
        if self.modality:
            out["Modality"] = self.modality
        if self.since:
            out["StudyDate"] = f"{self.since}-"
        return out


@dataclass(frozen=True)
class PacsItem(src.FileItem):
    """A PACS instance as a file item: id = SOP Instance UID, origin = its WADO-RS URL, path = its spool file."""
    study: str = ""
    series: str = ""
    frames: int = 1   # NumberOfFrames as QIDO-RS reported it (1 when it did not)


class Pacs:
    """A DICOMweb service at `url` (http(s)://...), authenticated with `auth`: QIDO-RS through dicomweb-client, and
    WADO-RS of whole instances on the same session. The fetch reads the HTTP reply itself because dicomweb-client
    hands back pydicom datasets, whose bytes are not the ones sent (a deflated instance is kept inflated)."""

    def __init__(self, url: str, auth: PacsAuth = PacsAuth(), timeout: float = TIMEOUT_S):
        try:
            import requests  # noqa: PLC0415 - dicomweb-client brings it
            from dicomweb_client.api import DICOMwebClient  # noqa: PLC0415
        except ImportError:
            raise FailedPrecondition("indexing from a PACS needs dicomweb-client: pip install 'simdex[pacs]'") from None
        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        if auth.user is not None:
            self.session.auth = (auth.user, auth.password or "")
        if auth.token:
            self.session.headers["Authorization"] = f"Bearer {auth.token}"
        self.client = DICOMwebClient(url, session=self.session, timeout=timeout)

    def instances(self, opts: PacsOptions) -> list[dict]:
        """QIDO-RS: {'study', 'series', 'sop', 'frames'} of each matching instance, once each, sorted by UIDs."""
        found = {}
        for study in opts.studies or (None,):
            what = f"QIDO-RS search of study {study}" if study else "QIDO-RS search of instances"
            rows = self.call(what, self.client.search_for_instances, study_instance_uid=study,
                             search_filters=opts.filters(), fields=["NumberOfFrames"], limit=PAGE,
                             get_remaining=True)
            for r in rows:
                inst = {"study": tag_text(r, STUDY) or study or "", "series": tag_text(r, SERIES),
                        "sop": tag_text(r, SOP), "frames": max(1, tag_int(r, FRAMES, 1))}
                if inst["sop"] and inst["series"] and inst["study"]:
                    found[inst["sop"]] = inst
        return sorted(found.values(), key=lambda i: (i["study"], i["series"], i["sop"]))

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.url}/studies/{study}/series/{series}/instances/{sop}"

    def fetch(self, item: PacsItem) -> bytes:
        """WADO-RS: the instance's Part-10 bytes as the PACS sent them (in the transfer syntax it holds)."""
        what = f"WADO-RS retrieval of {item.origin}"
        r = self.call(what, self.session.get, item.origin, headers={"Accept": ACCEPT_DICOM}, timeout=self.timeout)
        self.call(what, r.raise_for_status)
        ctype = r.headers.get("Content-Type", "")
        if ctype.lower().startswith("application/dicom"):  # some servers send a lone instance without multipart
            return r.content
        parts = self.call(what, multipart_parts, ctype, r.content)
        if len(parts) != 1:
            raise FailedPrecondition(f"the PACS at {self.url} sent {len(parts)} parts for {what}, expected 1")
        return parts[0]

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs); an unreachable PACS is Unavailable, refused credentials Unauthenticated (401) or
        PermissionDenied (403); other HTTP answers and undecodable replies are FailedPrecondition. Each names
        the PACS and `what`."""
        import requests  # noqa: PLC0415

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status == 401:
                raise Unauthenticated(f"the PACS at {self.url} refused the credentials (HTTP 401) for {what}: give "
                                      "--pacs-token-file, or --pacs-user and --pacs-password-file") from None
            if status == 403:
                raise PermissionDenied(f"the PACS at {self.url} forbids {what} (HTTP 403)") from None
            raise FailedPrecondition(f"the PACS at {self.url} answered HTTP {status} for {what}") from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise Unavailable(f"cannot reach the PACS at {self.url} for {what}: {type(e).__name__}") from None
        except (requests.RequestException, ValueError) as e:
            # ValueError: a reply that is not the DICOM/JSON asked for (pydicom's InvalidDicomError is one)
            raise FailedPrecondition(f"the PACS at {self.url} sent an unusable reply for {what}: "
                                     f"{type(e).__name__}: {e}") from None


class PacsSource:
    """The instances of one `simdex index dicomweb+...` run, as file items spooled under `spool`."""

    def __init__(self, source: str, opts: PacsOptions, spool: Path, all_frames: bool):
        self.pacs = Pacs(dicomweb_url(source), opts.auth)
        self.all_frames = all_frames
        self.fetched = 0
        self.items = [PacsItem(i["sop"], spool / f"{n}.dcm", self.pacs.instance_url(i["study"], i["series"], i["sop"]),
                               i["study"], i["series"], i["frames"])
                      for n, i in enumerate(self.pacs.instances(opts))]
        LOG.info("%d instance(s) listed by the PACS at %s", len(self.items), self.pacs.url)

    def todo(self, job: Job, stored: Callable[[list[str]], dict], keep_bytes: bool,
             block: int) -> Iterator[src.Planned]:
        """The instances not stored yet, fetched and planned, in listing order. `stored(ids)` -> the stored ones
        among `ids`; an instance counts as stored when every id it would give is. Fetch failures are reported."""
        with ThreadPoolExecutor(FETCHERS, thread_name_prefix="simdex-wado") as pool:
            for a in range(0, len(self.items), block):
                items = self.items[a:a + block]
                ids = {it.id: src.frame_ids(it.id, it.frames, self.all_frames) for it in items}
                held = stored([i for v in ids.values() for i in v])
                new = []
                for n, it in enumerate(items, a):
                    if all(i in held for i in ids[it.id]):
                        job.advance(1, skipped=len(ids[it.id]))
                    else:
                        new.append((n, it))
                for n, it, data in _in_order(pool, self._fetch, new, 2 * FETCHERS):
                    if isinstance(data, SimdexError):
                        job.fail(it.id, it.where, data.message)
                        continue
                    self.fetched += 1
                    yield self._plan(n, it, data, keep_bytes)

    def _fetch(self, n: int, it: PacsItem) -> tuple[int, PacsItem, bytes | SimdexError]:
        """(n, it, bytes) or (n, it, the error of this one instance); an unreachable PACS or refused credentials
        stop the run."""
        try:
            data = self.pacs.fetch(it)
        except (Unavailable, Unauthenticated, PermissionDenied):
            raise
        except SimdexError as e:
            return n, it, e
        return n, it, data

    def _plan(self, n: int, it: PacsItem, data: bytes, keep_bytes: bool) -> src.Planned:
        p = src.plan_bytes(n, it, data, self.all_frames, keep_bytes)
        if not keep_bytes:
            it.path.write_bytes(data)  # the local-embed workers read it there
        LOG.debug("fetched %s (%d bytes, sha256 %s)", it.origin, len(data), p.hashes[0][:12])
        return p


def _in_order(pool: ThreadPoolExecutor, fn: Callable, work: list[tuple], window: int) -> Iterator:
    """fn(*w) for each w of `work` in `pool`, results in order, at most `window` running or waiting (memory stays
    bounded by a few instances, whatever the block size)."""
    work = iter(work)
    pending = deque(pool.submit(fn, *w) for w in itertools.islice(work, window))
    while pending:
        done = pending.popleft().result()
        pending.extend(pool.submit(fn, *w) for w in itertools.islice(work, 1))
        yield done


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The contents of the parts of a multipart/related message (RFC 2046 5.1.1: a part is its headers, a blank
    line and its content, and each delimiter "--BOUNDARY" begins a line). ValueError if it is not one."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/related") or m is None:
        raise ValueError(f"expected multipart/related with a boundary, got Content-Type {content_type!r}")
    pieces = (b"\r\n" + body).split(b"\r\n--" + m.group(1).strip().encode("ascii"))
    out = []
    for piece in pieces[1:]:  # pieces[0] is the preamble
        if piece.startswith(b"--"):  # the close delimiter
            break
        head_end = piece.find(b"\r\n\r\n")
        if head_end < 0:
            raise ValueError("a part without the blank line that ends its headers")
        out.append(piece[head_end + 4:])
    return out


def tag_text(row: dict, tag: str) -> str:
    """The first value of `tag` in DICOM JSON `row` if it is a string, else ''."""
    v = (row.get(tag) or {}).get("Value") or [""]
    return v[0] if isinstance(v[0], str) else ""


def tag_int(row: dict, tag: str, default: int) -> int:
    """The first value of `tag` in DICOM JSON `row` as an int; `default` when it is missing or not a number."""
    v = (row.get(tag) or {}).get("Value") or [None]
    try:
        return int(v[0])
    except (TypeError, ValueError):
        return default
