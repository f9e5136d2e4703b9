"""The CLI on a bare install: its parser loads no server-side module, and `simdex serve` without the server extra
exits with one line naming the extras and the missing module (never a traceback)."""
import subprocess
import sys

import pytest

PARSER_ONLY = """
import sys
from simdex.cli.main import build_parser
build_parser()
heavy = ("torch", "faiss", "sqlalchemy", "sklearn", "grpc", "simdex.clients", "simdex.server", "simdex.service",
         "simdex.store", "simdex.index", "simdex.embedder")
print(",".join(m for m in heavy if m in sys.modules))
"""

SERVE_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None  # as if the module were not installed
from simdex.cli.main import main
sys.exit(main(["serve", "--data", sys.argv[2], "--port", "0"]))
"""


def test_building_the_parser_loads_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PARSER_ONLY], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("missing", ["grpc_health", "faiss", "sqlalchemy"])
def test_serve_without_the_server_extra_names_it_in_one_line(missing, tmp_path):
    r = subprocess.run([sys.executable, "-c", SERVE_WITHOUT, missing, str(tmp_path / "d")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'simdex[server,cpu]'" in lines[0] and "simdex[server,gpu]" in lines[0]
    assert lines[0].split("; missing module: ")[1].split(".")[0] == missing  # e.g. grpc_health.v1
    assert not (tmp_path / "d").exists()  # nothing was started


def test_missing_module_follows_reraised_import_errors():
    from simdex.cli.serve import missing_module

    try:
        try:
            import simdex_no_such_module  # noqa: F401
        except ImportError as inner:
            raise ImportError("the server needs FAISS: install an extra") from inner
    except ImportError as exc:
        assert missing_module(exc) == "simdex_no_such_module"
    assert missing_module(ImportError("no name")) is None
