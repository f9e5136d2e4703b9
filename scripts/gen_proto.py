"""Generate simdex/proto/*_pb2*.py(i) from proto/simdex/v1/*.proto, and ship a copy of each .proto beside them.
The only way stubs are made.

Usage: python scripts/gen_proto.py [--out DIR]   (DIR defaults to the repository root)

The include mapping `simdex/proto=proto/simdex/v1` makes protoc write `simdex/proto/simdex_pb2.py` whose
gRPC module imports `from simdex.proto import simdex_pb2`, so the stubs live inside the package. The copy
`simdex/proto/simdex.proto` is package data (`simdex proto` prints it, for clients in other languages); its path
in the package is the file name the descriptors and reflection give it.
Versions are pinned in pyproject's `dev` extra (grpcio-tools, mypy-protobuf); tests/server/test_proto_stubs.py fails
when the committed files differ from a fresh run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "simdex" / "v1"
GENERATED = ("simdex_pb2.py", "simdex_pb2.pyi", "simdex_pb2_grpc.py", "simdex_pb2_grpc.pyi")
SHIPPED = ("simdex.proto",)  # copied unchanged: the contract other languages read, comments included


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    bindir = Path(sys.executable).parent
    mypy = shutil.which("protoc-gen-mypy", path=str(bindir)) or shutil.which("protoc-gen-mypy")
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=str(bindir)) or shutil.which("protoc-gen-mypy_grpc")
    if not mypy or not mypy_grpc:
        raise SystemExit("protoc-gen-mypy not found: install the dev extra (pip install -e '.[dev]')")
    (out / "simdex" / "proto").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-Isimdex/proto={PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={mypy}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[f"simdex/proto/{name}" for name in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for name in SHIPPED:
        shutil.copyfile(PROTO_DIR / name, out / "simdex" / "proto" / name)
    return [out / "simdex" / "proto" / name for name in GENERATED + SHIPPED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    os.chdir(ROOT)
    for path in generate(args.out.resolve()):
        print(path.relative_to(args.out.resolve()))


if __name__ == "__main__":
    main()
