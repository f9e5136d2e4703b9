"""`simdex lookup` reads the files that items' `path` metadata names: only regular files, and at most a size cap
(simdex.lookup.files); /dev/zero, FIFOs and directories are reported as unreadable in the JSON and on the page."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simdex.lookup import page as lk
from test_lookup import _png

REPO = Path(__file__).resolve().parents[2]


_SPECIAL_FILES_SCRIPT = r"""
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # /dev/zero read whole would end here, not in the OOM
from types import SimpleNamespace
import numpy as np
from simdex.lookup import page as lk

root, png = sys.argv[1], open(sys.argv[2], "rb").read()
paths = ["/dev/zero", "fifo.png", "folder.png", "good.png"]
client = SimpleNamespace(
    get_collection=lambda name: SimpleNamespace(embedder="densenet-bc-random", metric="l2"),
    search=lambda *a, **k: SimpleNamespace(ids=[paths], distances=[np.arange(4, dtype=np.float32)],
                                           metadata=[[{"path": p} for p in paths]]))
res = lk.lookup(client, "c", png, k=4, root=root)
print(json.dumps({"json": res.to_json(), "html": lk.render_html(res)}))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_paths_naming_special_files_are_reported_not_read(tmp_path):
    """Items whose `path` names /dev/zero, a FIFO or a directory: the lookup neither runs out of memory nor waits
    for a writer; each is listed as unreadable, in the JSON and on the page, and the regular file beside them is
    shown. In a child process with a 2 GB address-space limit and a timeout, so that a regression fails the test
    instead of the machine."""
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "good.png").write_bytes(_png(1))
    (tmp_path / "query.png").write_bytes(_png(2))
    try:
        out = subprocess.run([sys.executable, "-c", _SPECIAL_FILES_SCRIPT, str(tmp_path), str(tmp_path / "query.png")],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("the lookup hung on a special file (a FIFO's open waits for a writer)")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    missing = {m["path"]: m["reason"] for m in got["json"]["missing"]}
    assert set(missing) == {"/dev/zero", "fifo.png", "folder.png"}
    assert "character device" in missing["/dev/zero"] and "FIFO" in missing["fifo.png"]
    assert "directory" in missing["folder.png"]
    assert all(r.startswith("unreadable: ") and "not a regular file" in r for r in missing.values())
    assert [h["thumbnail"] for h in got["json"]["hits"]] == [False, False, False, True]
    assert got["html"].count('<div class="missing"') == 3 and "not a regular file" in got["html"]


def test_files_over_the_size_cap_are_not_read(tmp_path):
    from simdex.lookup.files import UnreadableFile, read_file

    (tmp_path / "big.png").write_bytes(_png(1))
    size = (tmp_path / "big.png").stat().st_size
    png, problem = lk.Thumbnails(tmp_path, max_bytes=size - 1).get({"path": "big.png"})
    assert png is None and problem.startswith("unreadable: ") and f"{size:,} bytes" in problem
    assert lk.Thumbnails(tmp_path, max_bytes=size).get({"path": "big.png"})[0] is not None
    with pytest.raises(UnreadableFile, match="more than 10 bytes"):  # a pipe the user named: read, within the cap
        read_file("/dev/zero", 10, regular_only=False)
