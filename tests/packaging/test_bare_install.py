"""The bare install, as a team that only queries gets it: a fresh venv, `pip install .` with no extras.

There, the SDK imports and talks to a real server without torch, faiss, sqlalchemy or scikit-learn, and
`simdex serve` says in one line which extras to install instead of printing a traceback.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("torch", "torchvision", "faiss", "sqlalchemy", "alembic", "sklearn",
               "simdex.server", "simdex.service", "simdex.store", "simdex.index", "simdex.embedder")

QUERY = """
import json, sys
import numpy as np
from simdex.clients import Client
with Client(sys.argv[1]) as c:
    q = np.load(sys.argv[2])
    r = c.search("bare", q, k=5)
    loaded = sorted(m for m in {server_side!r} if m in sys.modules)
    print(json.dumps({{"ids": r.ids, "loaded": loaded}}))
"""


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                   check=True, timeout=900, env=env, cwd=venv.parent)
    return py


def test_bare_install_has_no_server_dependencies(bare_python):
    code = "import importlib.util as u; print([m for m in ('torch', 'faiss', 'sqlalchemy', 'sklearn') if u.find_spec(m)])"
    out = subprocess.run([str(bare_python), "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_bare_client_searches_a_real_server(bare_python, server, remote, tmp_path):
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((200, 16), dtype=np.float32), rng.standard_normal((3, 16), dtype=np.float32)
    remote.create_collection("bare", dim=16)
    remote.upsert("bare", [f"v{i}" for i in range(len(xb))], xb)
    np.save(tmp_path / "q.npy", xq)
    out = subprocess.run([str(bare_python), "-c", QUERY.format(server_side=SERVER_SIDE), server.target,
                          str(tmp_path / "q.npy")], check=True, capture_output=True, text=True, cwd=tmp_path)
    import json

    got = json.loads(out.stdout)
    assert got["loaded"] == []
    _, I = oracle(xb, xq, 5)
    assert got["ids"] == [[f"v{i}" for i in row] for row in I]


def test_bare_install_ships_the_proto_and_prints_it(bare_python, tmp_path):
    record = "from importlib.metadata import files; print([str(f) for f in files('simdex') if f.suffix == '.proto'])"
    out = subprocess.run([str(bare_python), "-c", record], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "['simdex/proto/simdex.proto']"  # in the wheel's RECORD
    printed = subprocess.run([str(bare_python.parent / "simdex"), "proto"], check=True, capture_output=True,
                             text=True, cwd=tmp_path).stdout
    assert printed == (ROOT / "proto" / "simdex" / "v1" / "simdex.proto").read_text()


def test_bare_serve_names_the_extras_in_one_line(bare_python, tmp_path):
    simdex = bare_python.parent / "simdex"
    r = subprocess.run([str(simdex), "serve", "--data", str(tmp_path / "d"), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "simdex[server,cpu]" in lines[0] and "Traceback" not in r.stderr
