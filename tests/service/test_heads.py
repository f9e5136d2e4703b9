"""Linear heads over gRPC and in-process: classifiers against scikit-learn, projections against a known map,
versions, errors and their status codes, storage as plain float32, the CLI."""
import functools
import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from simdex import clients
from simdex.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@functools.lru_cache(maxsize=None)
def digits_oracle(class_weight=None):
    """scikit-learn on the rows the head trains on: ids sorted, stratified seeded split (see simdex.service.heads)."""
    X, y = digits()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    m = LogisticRegression(max_iter=1000, class_weight=class_weight).fit(X[tr], y[tr])
    return m, np.sort(tr), np.sort(te)


def fill_digits(c, name="digits"):
    X, y = digits()
    c.create_collection(name, dim=64)
    c.upsert(name, [f"d{i:04d}" for i in range(len(X))], X, [{"label": int(v)} for v in y])


def blobs(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    X = rng.standard_normal((n, d)).astype(np.float32) + 2.5 * y[:, None].astype(np.float32)
    return X, y


def test_digits_head_reaches_093_and_agrees_with_scikit_learn(client):
    X, y = digits()
    fill_digits(client)
    report = client.train_head("digits", head="digit", label_field="label")
    m, tr, te = digits_oracle()
    assert report.kind == "logistic" and report.version == 1 and report.collection == "digits"
    assert report.classes == list(range(10)) and all(type(c) is int for c in report.classes)
    assert report.metrics["n_train"] == len(tr) == report.trained_on and report.metrics["n_test"] == len(te)
    assert report.metrics["accuracy"] >= 0.93
    assert report.metrics["accuracy"] == pytest.approx(m.score(X[te], y[te]), abs=0.006)
    assert 0.9 <= report.metrics["macro_f1"] <= 1.0
    cm = np.array(report.metrics["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == len(te) and np.trace(cm) / len(te) == report.metrics["accuracy"]
    p = client.predict("digit", vectors=X)
    assert len(p.labels) == len(X) and all(type(v) is int for v in p.labels)
    assert p.probabilities.dtype == np.float32 and p.probabilities.shape == (len(X), 10)
    np.testing.assert_allclose(p.probabilities.sum(1), 1.0, atol=1e-5)
    assert p.labels == [p.classes[j] for j in p.probabilities.argmax(1)]
    assert np.mean(np.array(p.labels) == m.predict(X)) >= 0.98
    np.testing.assert_allclose(p.probabilities, m.predict_proba(X), atol=0.05)
    by_id = client.predict("digit", ids=["d0003", "d0001"])
    assert by_id.labels == [p.labels[3], p.labels[1]]


def test_torch_head_matches_the_scikit_learn_head_within_one_point(remote):
    fill_digits(remote)
    sk = remote.train_head("digits", head="sk", label_field="label")
    th = remote.train_head("digits", head="th", kind="torch-logistic", label_field="label")
    assert th.kind == "torch-logistic" and th.metrics["n_train"] == sk.metrics["n_train"]
    assert th.metrics["accuracy"] >= 0.93
    assert abs(th.metrics["accuracy"] - sk.metrics["accuracy"]) <= 0.01
    X, _ = digits()
    agree = np.mean(np.array(remote.predict("th", vectors=X).labels) == np.array(remote.predict("sk", vectors=X).labels))
    assert agree >= 0.98


def test_projection_head_recovers_a_linear_map_and_searches_through_it(client):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((1200, 16)).astype(np.float32)
    M = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    B = A @ M + b + 0.01 * rng.standard_normal((1200, 8)).astype(np.float32)
    client.create_collection("img", dim=16)
    client.create_collection("txt", dim=8)
    client.upsert("img", [f"x{i}" for i in range(1200)], A)
    client.upsert("txt", [f"x{i}" for i in range(200, 1200)] + ["only-txt"], np.vstack([B[200:], B[:1]]))
    h = client.train_head("img", head="img2txt", kind="projection", target_collection="txt", alpha=1e-3)
    assert (h.kind, h.target_collection, h.dim, h.out_dim, h.classes) == ("projection", "txt", 16, 8, [])
    assert h.metrics["n_pairs"] == 1000 and h.metrics["n_train"] == 800 and h.metrics["n_test"] == 200
    assert h.metrics["r2"] > 0.999 and h.metrics["retrieval_top1"] >= 0.99
    Xq = rng.standard_normal((50, 16)).astype(np.float32)
    p = client.predict("img2txt", vectors=Xq)
    assert p.labels is None and p.vectors.dtype == np.float32 and p.vectors.shape == (50, 8)
    np.testing.assert_allclose(p.vectors, Xq @ M + b, atol=0.02)
    r = client.search("txt", A[200:300], k=1, head="img2txt")    # image-space queries find their text items
    assert [ids[0] for ids in r.ids] == [f"x{i}" for i in range(200, 300)]
    with pytest.raises(clients.InvalidArgument, match="not into 'img'"):
        client.search("img", A[:2], k=1, head="img2txt")


def test_retraining_stores_a_new_version_and_delete_removes_every_one(client):
    X, y = blobs()
    client.create_collection("b", dim=8)
    client.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": int(v)} for v in y])
    assert client.train_head("b", "h", label_field="y").version == 1
    v2 = client.train_head("b", "h", label_field="y", C=0.1, test_fraction=0.5)
    assert v2.version == 2 and v2.params["C"] == 0.1 and v2.metrics["n_test"] == 200
    got = client.get_head("h")
    assert got.version == 2 and got.metrics == v2.metrics and got.created_unix_ms == v2.created_unix_ms
    assert client.predict("h", vectors=X[:3]).version == 2
    client.train_head("b", "other", label_field="y", test_fraction=0)
    assert [(h.name, h.version) for h in client.list_heads()] == [("h", 2), ("other", 1)]
    assert [h.name for h in client.list_heads("b")] == ["h", "other"]
    assert client.delete_head("h") == 1          # the old version went when version 2 was committed
    with pytest.raises(clients.NotFound, match="head 'h' not found"):
        client.get_head("h")
    client.delete_collection("b")                # heads go with their collection
    assert client.list_heads() == []


def test_string_labels_from_an_explicit_map_with_balancing(client):
    X, y = blobs(n=600)
    keep = np.flatnonzero((y == 0) | (np.arange(len(y)) % 6 == 1))   # 300 "cat", 100 "dog"
    X, y = X[keep], y[keep]
    client.create_collection("pets", dim=8)
    ids = [f"p{i:03d}" for i in range(len(X))]
    client.upsert("pets", ids, X)
    labels = {i: ("dog" if v else "cat") for i, v in zip(ids, y)}
    h = client.train_head("pets", "pet", labels=labels, balanced=True, test_fraction=0)
    assert h.classes == ["cat", "dog"] and h.metrics["n_train"] == 400 and h.params["balanced"] is True
    p = client.predict("pet", vectors=X)
    assert set(p.labels) <= {"cat", "dog"} and all(type(v) is str for v in p.labels)
    m = LogisticRegression(max_iter=1000, class_weight="balanced").fit(X, y)
    assert np.mean(np.array(p.labels) == np.where(m.predict(X) == 1, "dog", "cat")) >= 0.98
    np.testing.assert_allclose(p.probabilities[:, 1], m.predict_proba(X)[:, 1], atol=0.02)


def test_items_without_the_label_are_skipped_and_counted(client):
    X, y = blobs()
    client.create_collection("b", dim=8)
    metas = [{"y": int(v)} if i % 10 else {"other": 1} for i, v in enumerate(y)]
    metas[1] = {"y": None}
    client.upsert("b", [f"p{i}" for i in range(len(X))], X, metas)
    h = client.train_head("b", "h", label_field="y")
    assert h.metrics["n_unlabelled"] == 41 and h.metrics["n_train"] + h.metrics["n_test"] == 359
    with pytest.raises(clients.FailedPrecondition, match="one class 1"):   # a filter that leaves one class
        client.train_head("b", "f", label_field="y", filter={"y": 1})
    with pytest.raises(clients.FailedPrecondition, match="test_fraction=0.2 of 3 items"):
        client.train_head("b", "f", labels={"p1": 1, "p2": 0, "p3": 1})

def test_head_errors(client):
    X, y = blobs()
    client.create_collection("b", dim=8)
    client.create_collection("c", dim=8)
    client.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": int(v), "one": "x", "mix": "s" if v else 0}
                                                            for v in y])
    client.upsert("c", ["q"], X[:1])
    client.train_head("b", "h", label_field="y")
    cases = [
        (clients.NotFound, "head 'nope' not found", lambda: client.predict("nope", vectors=X[:1])),
        (clients.NotFound, "head 'nope' not found", lambda: client.delete_head("nope")),
        (clients.NotFound, "collection 'zz' not found", lambda: client.train_head("zz", "h2", label_field="y")),
        (clients.AlreadyExists, "head 'h' already exists .*collection 'b'",
         lambda: client.train_head("c", "h", labels={"q": 1})),
        (clients.AlreadyExists, "head 'h' already exists",
         lambda: client.train_head("b", "h", kind="torch-logistic", label_field="y")),
        (clients.FailedPrecondition, "field 'colour'", lambda: client.train_head("b", "h2", label_field="colour")),
        (clients.FailedPrecondition, "one class 'x'", lambda: client.train_head("b", "h2", label_field="one")),
        (clients.FailedPrecondition, "labels mix", lambda: client.train_head("b", "h2", label_field="mix")),
        (clients.NotFound, "'ghost'", lambda: client.train_head("b", "h2", labels={"p1": 1, "ghost": 0})),
        (clients.InvalidArgument, "exactly one way", lambda: client.train_head("b", "h2")),
        (clients.InvalidArgument, "exactly one way",
         lambda: client.train_head("b", "h2", label_field="y", labels={"p1": 1})),
        (clients.InvalidArgument, "kind 'svm'", lambda: client.train_head("b", "h2", kind="svm", label_field="y")),
        (clients.InvalidArgument, "'gamma' is not a parameter",
         lambda: client.train_head("b", "h2", label_field="y", gamma=1)),
        (clients.InvalidArgument, "C=-1", lambda: client.train_head("b", "h2", label_field="y", C=-1)),
        (clients.InvalidArgument, "test_fraction", lambda: client.train_head("b", "h2", label_field="y",
                                                                             test_fraction=1.0)),
        (clients.InvalidArgument, "target_collection",
         lambda: client.train_head("b", "h2", kind="projection", label_field="y")),
        (clients.InvalidArgument, "head name", lambda: client.train_head("b", "bad name", label_field="y")),
        (clients.InvalidArgument, "dimension 4", lambda: client.predict("h", vectors=X[:2, :4])),
        (clients.InvalidArgument, "exactly one of", lambda: client.predict("h")),
        (clients.NotFound, "'nope'", lambda: client.predict("h", ids=["p1", "nope"])),
        (clients.FailedPrecondition, "plain vectors", lambda: client.predict("h", images=[b"\x89PNG"])),
        (clients.InvalidArgument, "needs a projection", lambda: client.search("b", X[:1], k=1, head="h")),
    ]
    for err, message, call in cases:
        with pytest.raises(err, match=message):
            call()
    assert [h.name for h in client.list_heads()] == ["h"]   # nothing partial was stored


def test_status_codes_over_grpc(server, remote):
    from simdex.proto import simdex_pb2 as pb
    from simdex.proto import simdex_pb2_grpc as pb_grpc

    X, y = blobs()
    remote.create_collection("b", dim=8)
    remote.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": 0} for _ in y])
    with grpc.insecure_channel(server.target) as channel:  # the raw RPCs, as any gRPC client sees them
        stub = pb_grpc.SimdexStub(channel)
        for request, rpc, code in [
            (pb.GetHeadRequest(name="nope"), stub.GetHead, grpc.StatusCode.NOT_FOUND),
            (pb.TrainHeadRequest(collection="b", head="h", label_field="y"), stub.TrainHead,
             grpc.StatusCode.FAILED_PRECONDITION),
            (pb.TrainHeadRequest(collection="b", head="h", labels="[1]"), stub.TrainHead,
             grpc.StatusCode.INVALID_ARGUMENT),
            (pb.PredictRequest(head="nope", vectors=pb.Matrix(data=b"\0" * 12, shape=[1, 3])), stub.Predict,
             grpc.StatusCode.NOT_FOUND),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                rpc(request)
            assert info.value.code() == code and info.value.details()


def test_a_changed_embedder_fingerprint_refuses_the_head(server, remote):
    X, y = blobs()
    remote.create_collection("b", dim=8)
    remote.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": int(v)} for v in y])
    remote.create_collection("t", dim=8)
    remote.upsert("t", [f"p{i}" for i in range(len(X))], X[:, ::-1])
    assert remote.train_head("b", "h", label_field="y").embedder_fingerprint == ""
    remote.train_head("b", "proj", kind="projection", target_collection="t")
    store = server.service.store
    store.set_embedder_fingerprint(store.get_collection("b").id, "vgg16-fc6:0123abcd")
    for call in (lambda: remote.predict("h", vectors=X[:2]), lambda: remote.predict("h", ids=["p1"]),
                 lambda: remote.search("t", X[:1], k=1, head="proj")):
        with pytest.raises(clients.FailedPrecondition, match="fingerprint '', which is now 'vgg16-fc6:0123abcd'.*retrain"):
            call()
    h = remote.train_head("b", "h", label_field="y")           # retraining records the new fingerprint
    assert h.version == 2 and h.embedder_fingerprint == "vgg16-fc6:0123abcd"
    assert len(remote.predict("h", vectors=X[:2]).labels) == 2


def test_heads_are_stored_as_plain_float32_and_survive_a_restart(tmp_path, db_url):
    from sqlalchemy import select

    from simdex.service.facade import Simdex
    from simdex.store.tables import HeadRow
    from simdex.types import HeadSpec

    X, y = blobs()
    s = Simdex(tmp_path / "d", db_url, snapshot_interval=0)
    s.create_collection("b", 8)
    s.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": ["a", "b"][v]} for v in y])
    rec = s.train_head(HeadSpec("b", "h", label_field="y"))
    expected = s.predict("h", vectors=X).probabilities
    s.close()
    s = Simdex(tmp_path / "d", db_url, snapshot_interval=0)
    try:
        with s.engine.connect() as conn:
            row = conn.execute(select(HeadRow)).one()
        assert row.shapes == [[2, 8], [2]] and len(row.weights) == 4 * (2 * 8 + 2)
        W = np.frombuffer(row.weights, dtype="<f4", count=16).reshape(2, 8)
        b = np.frombuffer(row.weights, dtype="<f4", offset=64)
        z = X.astype(np.float64) @ W.T + b
        P = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(P / P.sum(1, keepdims=True), expected, atol=1e-5)
        got = s.get_head("h")
        assert (got.classes, got.version, got.metrics) == (["a", "b"], 1, rec.metrics)
        np.testing.assert_array_equal(s.predict("h", vectors=X).probabilities, expected)
    finally:
        s.close()


def test_no_pickle_anywhere_near_the_heads():
    banned = re.compile(r"import (pickle|joblib|dill|cloudpickle)|pickle\.|torch\.(save|load)|allow_pickle=True")
    paths = [p for pkg in ("store", "service", "estimators") for p in (ROOT / "simdex" / pkg).rglob("*.py")]
    assert len(paths) > 10
    for path in paths:
        text = path.read_text()
        assert not banned.search(text), path


def test_cli_heads_and_predict(server, remote, tmp_path, capsys):
    X, y = blobs()
    remote.create_collection("b", dim=8)
    remote.upsert("b", [f"p{i}" for i in range(len(X))], X, [{"y": int(v)} for v in y])
    np.save(tmp_path / "q.npy", X[:3])
    target = ["--target", server.target]

    def run(*argv):
        assert cli.main([*argv, *target]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]

    (h,) = run("heads", "train", "b", "h", "--label-field", "y", "--param", "C=0.5", "--balanced")
    assert h["name"] == "h" and h["params"]["C"] == 0.5 and h["metrics"]["accuracy"] > 0.9
    assert [r["name"] for r in run("heads", "list")] == ["h"]
    assert run("heads", "show", "h")[0]["version"] == 1
    rows = run("predict", "h", "--vectors", str(tmp_path / "q.npy"), "--out", str(tmp_path / "p.npy"))
    assert [r["label"] for r in rows] == remote.predict("h", vectors=X[:3]).labels
    assert np.load(tmp_path / "p.npy").shape == (3, 2)
    assert [r["id"] for r in run("predict", "h", "--ids", "p1", "p2")] == ["p1", "p2"]
    assert run("heads", "delete", "h") == [{"deleted": "h", "versions": 1}]
    assert cli.main(["heads", "show", "h", *target]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
