"""A real PACS for the DICOMweb tests: Debian's Orthanc with its DICOMweb plugin, started on free loopback ports with
a temporary configuration and storage, and pydicom's bundled images to load into it with STOW-RS.

`OrthancProc` is one `Orthanc` process: HTTP and DICOM ports picked free, storage and index in its own folder, the
DICOMweb plugin loaded from Debian's package path, and one of three kinds of access (`auth`):
- None: no authentication;
- "basic": HTTP basic authentication (Orthanc's RegisteredUsers), user `USER`, password in `password_file`;
- "token": a bearer token (`Authorization: Bearer TOKEN`, the token in `token_file`), checked by a Lua
  IncomingHttpRequestFilter, since Orthanc has no token authentication of its own.
Every HTTP request it accepts is appended to `requests.log` as "METHOD URI" by the same Lua filter, so a test can
prove from the PACS side which instances were fetched (`requests()`, `wado_instance_requests()`). Orthanc 1.10 cannot
be told which address to bind; `RemoteAccessAllowed: false` makes it answer loopback clients only.

The `orthanc` fixture of tests/conftest.py starts these; without Orthanc (or when it cannot start) the tests that use
it skip, or fail when SIMDEX_REQUIRE_PACS=1 (CI: `make test` installs it with the `pacs` target)."""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from proc import _die_with_parent, free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb
READY_TIMEOUT = 30.0  # seconds for Orthanc to answer /system with the DICOMweb plugin loaded (about 1 s here)
USER = "simdex"
ROOT = "/dicom-web"

# Logs every accepted request; with a token set, accepts only requests that carry it. Orthanc gives the filter the
# request's headers with lower-case names.
_FILTER = """
REQUEST_LOG = %s
TOKEN = %s
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if TOKEN ~= nil and httpHeaders['authorization'] ~= 'Bearer ' .. TOKEN then
    return false
  end
  local f = io.open(REQUEST_LOG, 'a')
  f:write(method .. ' ' .. uri .. '\\n')
  f:close()
  return true
end
"""


def missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if not (os.path.isfile(ORTHANC) and os.access(ORTHANC, os.X_OK)):
        return f"Orthanc is not installed ({ORTHANC}; `make pacs` installs Debian's orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return f"the DICOMweb plugin {DICOMWEB_PLUGIN} is missing (`make pacs` installs Debian's orthanc-dicomweb)"
    return None


def _lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string of printable ASCII is a valid Lua string literal


class OrthancError(RuntimeError):
    """Orthanc exited or did not become ready; the message holds the tail of its log."""


class OrthancProc:
    """One Orthanc process in `workdir` (see the module docstring); ready when the constructor returns."""

    def __init__(self, workdir: Path, auth: str | None = None):
        if auth not in (None, "basic", "token"):
            raise ValueError(f"auth {auth!r}: expected None, 'basic' or 'token'")
        self.workdir, self.auth = workdir, auth
        workdir.mkdir(parents=True, exist_ok=True)
        self.password = secrets.token_urlsafe(12) if auth == "basic" else None
        self.token = secrets.token_urlsafe(24) if auth == "token" else None
        self.password_file = self._secret("password.txt", self.password)
        self.token_file = self._secret("token.txt", self.token)
        self.request_log = workdir / "requests.log"
        self.request_log.touch()
        self.log = workdir / "orthanc.log"
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = self.url + ROOT
        self.source = "dicomweb+" + self.dicomweb_url  # what `simdex index` takes
        config = workdir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=1))
        self._logfh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen([ORTHANC, str(config)], stdout=self._logfh, stderr=subprocess.STDOUT,
                                      cwd=str(workdir), preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    # ---- configuration ---------------------------------------------------------------------------------------
    def _secret(self, name: str, value: str | None) -> Path | None:
        if value is None:
            return None
        p = self.workdir / name
        p.write_text(value + "\n")
        p.chmod(0o600)
        return p

    def _config(self) -> dict:
        lua = self.workdir / "filter.lua"
        lua.write_text(_FILTER % (_lua_string(str(self.request_log)),
                                  _lua_string(self.token) if self.token else "nil"))
        storage = self.workdir / "storage"
        return {
            "Name": "simdex-test-pacs",
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "SIMDEXTEST",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.auth == "basic",
            "RegisteredUsers": {USER: self.password} if self.password else {},
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": ROOT + "/", "EnableWado": False},
            "LuaScripts": [str(lua)],
            "HttpThreadsCount": 8, "ConcurrentJobs": 1, "SaveJobs": False,
            "HttpDescribeErrors": True, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "StableAge": 1,
        }

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        """Authorization header for this PACS (empty without authentication)."""
        if self.auth == "token":
            return {"Authorization": f"Bearer {self.token}"}
        if self.auth == "basic":
            import base64

            return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{self.password}".encode()).decode()}
        return {}

    def get(self, path: str, **kwargs):
        """GET `path` (e.g. '/system') with this PACS's credentials -> requests.Response."""
        import requests

        return requests.get(self.url + path, headers={**self.headers(), **kwargs.pop("headers", {})},
                            timeout=kwargs.pop("timeout", 10), **kwargs)

    def client(self):
        """A dicomweb-client DICOMwebClient on this PACS, authenticated."""
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(self.dicomweb_url, headers=self.headers())

    def cli_auth(self) -> list[str]:
        """The `simdex index` flags that authenticate to this PACS."""
        if self.auth == "token":
            return ["--pacs-token-file", str(self.token_file)]
        if self.auth == "basic":
            return ["--pacs-user", USER, "--pacs-password-file", str(self.password_file)]
        return []

    def _wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.popen.returncode} before it was ready\n"
                                   f"{self.log_tail()}")
            try:
                r = self.get("/plugins", timeout=2)
                if r.status_code == 200 and "dicom-web" in r.json():
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.1)
        raise OrthancError(f"Orthanc not ready after {READY_TIMEOUT}s (last: {last})\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # ---- what the PACS saw -----------------------------------------------------------------------------------
    def requests(self) -> list[str]:
        """Every request Orthanc accepted so far, as 'METHOD URI', in order."""
        return self.request_log.read_text().splitlines()

    def wado_instance_requests(self) -> list[str]:
        """The SOP Instance UIDs of the WADO-RS instance retrievals it served so far, in order."""
        out = []
        for line in self.requests():
            method, _, uri = line.partition(" ")
            parts = uri.split("?")[0].strip("/").split("/")
            # dicom-web/studies/S/series/R/instances/I (not .../metadata, .../frames/N, .../rendered)
            if method == "GET" and len(parts) == 7 and parts[1::2] == ["studies", "series", "instances"]:
                out.append(parts[6])
        return out

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        if not self._logfh.closed:
            self._logfh.close()


def start(workdir: Path, auth: str | None = None, attempts: int = 3) -> OrthancProc:
    """A ready OrthancProc in a new sub-folder of `workdir`; started again on fresh ports (up to `attempts` times)
    when one it picked was taken in between. Raises OrthancError with the last log tail."""
    for n in range(attempts):
        try:
            return OrthancProc(workdir / f"orthanc-{secrets.token_hex(4)}", auth)
        except OrthancError:
            if n == attempts - 1:
                raise
    raise AssertionError("unreachable")


# ---- test data: pydicom's bundled images -----------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One DICOM instance to store: the pydicom test file it came from, its Part-10 bytes and its UIDs."""
    name: str
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str


def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test files, listed from the package's own folder (get_testdata_files() may download)."""
    import pydicom.data

    return sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))


def _thumbnail(rgb):
    """(16, 16) float grey thumbnail of an (h, w, 3) uint8 image: what near-duplicate detection compares."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(rgb)).convert("L").resize((16, 16), Image.BILINEAR), dtype=float)


def samples(limit: int | None = None) -> list[Sample]:
    """pydicom's test files that simdex decodes, one per distinct picture, each with a fresh SOP Instance UID.

    The folder holds the same pictures in many encodings (MR_small in 7 transfer syntaxes, the SC_rgb images
    losslessly and lossily recompressed) and reuses SOP Instance UIDs across them. A file is kept when its decoded
    first frame differs from every kept one of the same size by a mean of more than 8 grey levels on a 16x16
    thumbnail (lossy copies differ by less), so that each kept instance is its own nearest neighbour. Its SOP
    Instance UID (and the file meta's copy) is replaced by one derived from the file name: distinct, and the same
    on every call. Files pydicom cannot rewrite are left out."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    from simdex.embedder.decode import decode_image

    kept: list[tuple[tuple, np.ndarray]] = []
    out = []
    for path in pydicom_test_files():
        try:
            with warnings.catch_warnings():  # pydicom's remarks on its deliberately odd files
                warnings.simplefilter("ignore")
                first = decode_image(path.read_bytes(), path.name)[0]
                ds = pydicom.dcmread(path)
                uid = generate_uid(entropy_srcs=["simdex-test", path.name])
                ds.SOPInstanceUID = uid
                ds.file_meta.MediaStorageSOPInstanceUID = uid
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                data = buf.getvalue()
                decode_image(data, path.name)  # still decodes after the rewrite
        except Exception:  # noqa: BLE001 - the folder's deliberately broken, undecodable or unwritable files
            continue
        thumb, shape = _thumbnail(first.rgb), np.asarray(first.rgb).shape
        if any(s == shape and np.abs(t - thumb).mean() <= 8.0 for s, t in kept):
            continue
        if not ("StudyInstanceUID" in ds and "SeriesInstanceUID" in ds):
            continue
        kept.append((shape, thumb))
        out.append(Sample(path.name, data, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid))
        if limit is not None and len(out) == limit:
            break
    return out


def stow(pacs: OrthancProc, items: list[Sample]) -> None:
    """Store `items` in `pacs` with STOW-RS (one request), then check with QIDO-RS that it holds each of them."""
    import pydicom

    if not items:
        return
    client = pacs.client()
    client.store_instances([pydicom.dcmread(io.BytesIO(s.data)) for s in items])
    held = {r["00080018"]["Value"][0] for r in client.search_for_instances(fields=["SOPInstanceUID"])}
    lost = [s.name for s in items if s.sop_uid not in held]
    if lost:
        raise AssertionError(f"not in the PACS after STOW-RS: {lost}\n{pacs.log_tail()}")
