"""The client's side of the Backup RPC (clients/backup_files.py): a streamed backup gets its folder's name only when
every file it lists arrived whole, the manifest last; a stream cut short, a file that differs from the manifest or
a path outside the folder leave nothing behind."""
from __future__ import annotations

import hashlib
import json

import pytest

from simdex.clients.backup_files import receive
from simdex.errors import AlreadyExists, Internal

DB = b"rows " * 1000


def manifest(files: dict[str, bytes]) -> bytes:
    return json.dumps({"files": {k: {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                                 for k, v in files.items()}}).encode()


def pieces(files: dict[str, bytes], size: int = 700) -> list[tuple[str, bytes]]:
    """A server's stream: each file in pieces of `size` bytes, the manifest of all of them last."""
    out = [(name, data[i:i + size]) for name, data in files.items() for i in range(0, max(1, len(data)), size)]
    return out + [("manifest.json", manifest(files))]


def test_a_whole_stream_becomes_the_folder(tmp_path):
    files = {"simdex.db": DB, "indexes/1.npz": b"snap", "indexes/2.npz": b""}
    got = receive(lambda: pieces(files), tmp_path / "bk")
    assert set(got["files"]) == set(files)
    assert {n: (tmp_path / "bk" / n).read_bytes() for n in files} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk"]


@pytest.mark.parametrize("stream, message", [
    (pieces({"simdex.db": DB})[:-1], "ended without its manifest"),
    (pieces({"simdex.db": DB})[:3] + pieces({"simdex.db": DB})[-1:], r"does not match its manifest \(files \['simdex"),
    ([("simdex.db", DB)] + pieces({"simdex.db": DB, "indexes/1.npz": b"x"})[-1:], r"files \['indexes/1\.npz'\]"),
    ([("../escape", b"x")] + pieces({"simdex.db": DB}), r"named '\.\./escape' \(not a plain relative name"),
    ([("/etc/x", b"x")], "named '/etc/x'"),
    ([("simdex.db", b"a"), ("indexes/1.npz", b"b"), ("simdex.db", b"c")], "or sent twice"),
    ([("simdex.db", DB), ("manifest.json", b"[1, 2")], "manifest is not one"),
])
def test_a_stream_that_is_not_a_whole_backup_leaves_nothing(tmp_path, stream, message):
    with pytest.raises(Internal, match=message):
        receive(lambda: stream, tmp_path / "sub" / "bk")
    assert list((tmp_path / "sub").iterdir()) == []  # no partial folder, and nothing outside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_an_existing_folder_is_refused_before_the_stream_opens(tmp_path):
    (tmp_path / "bk").mkdir()

    def never():
        raise AssertionError("the stream was opened")

    with pytest.raises(AlreadyExists, match="bk already exists"):
        receive(never, tmp_path / "bk")
