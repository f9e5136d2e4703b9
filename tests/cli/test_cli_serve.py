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


def test_serve_reads_its_stream_flags_and_refuses_negative_ones(capsys):
    from simdex.cli.main import build_parser
    from simdex.defaults import SEARCH_STREAMS, SERVER_STREAM_IDLE_S

    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.search_streams, args.stream_idle_s) == (SEARCH_STREAMS, SERVER_STREAM_IDLE_S)
    args = parser.parse_args(["serve", "--search-streams", "0", "--stream-idle-s", "2.5"])
    assert (args.search_streams, args.stream_idle_s) == (0, 2.5)
    assert parser.parse_args(["serve", "--stream-idle-s", "0"]).stream_idle_s == 0
    for flag, value in (("--search-streams", "-1"), ("--stream-idle-s", "-0.5"), ("--stream-idle-s", "nan"),
                        ("--stream-idle-s", "0.5"), ("--stream-idle-s", "inf")):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", flag, value])
        assert flag in capsys.readouterr().err
