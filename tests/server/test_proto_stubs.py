"""The committed stubs, and the shipped copy of the .proto, equal a fresh run of the one generating script."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ("simdex_pb2.py", "simdex_pb2.pyi", "simdex_pb2_grpc.py", "simdex_pb2_grpc.pyi", "simdex.proto")


def test_committed_stubs_match_fresh_generation(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in STUBS:
        fresh = (tmp_path / "simdex" / "proto" / name).read_text()
        committed = (ROOT / "simdex" / "proto" / name).read_text()
        assert fresh == committed, f"simdex/proto/{name} is stale: run `make proto` and commit"
