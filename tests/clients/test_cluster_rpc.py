"""Cluster over gRPC and in-process: mean shift of a collection, paging, filters, errors, and the CLI plot."""
import functools
import json

import numpy as np
import pytest
from sklearn.cluster import MeanShift as SkMeanShift
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from simdex import clients
from simdex.cli import main as cli


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=3000, n_features=4, centers=6, cluster_std=0.8, random_state=3)
    return X.astype(np.float32), y


@functools.lru_cache(maxsize=None)
def sklearn_labels(bandwidth: float, cluster_all: bool) -> np.ndarray:
    """scikit-learn's labels for the blobs (slow: computed once for both client transports)."""
    X, _ = make_blobs(n_samples=3000, n_features=4, centers=6, cluster_std=0.8, random_state=3)
    return SkMeanShift(bandwidth=bandwidth, cluster_all=cluster_all).fit(X.astype(np.float32)).labels_


def fill(c, X, y, name="b"):
    c.create_collection(name, dim=X.shape[1])
    c.upsert(name, [f"p{i}" for i in range(len(X))], X, [{"y": int(v), "half": i % 2} for i, v in enumerate(y)])


def test_cluster_agrees_with_scikit_learn_and_pages_every_member(client, blobs):
    X, y = blobs
    fill(client, X, y)
    r = client.cluster("b", bandwidth=2.5, page_size=700)   # 5 pages of member labels
    sk_labels = sklearn_labels(2.5, True)
    assert len(r.ids) == 3000 and sorted(r.ids) == sorted(f"p{i}" for i in range(3000))
    order = [int(i[1:]) for i in r.ids]
    assert adjusted_rand_score(sk_labels[order], r.labels) >= 0.99
    assert len(r.clusters) == len(set(sk_labels.tolist()))
    assert sum(c.size for c in r.clusters) == 3000
    assert [c.size for c in r.clusters] == sorted((c.size for c in r.clusters), reverse=True)
    for c in r.clusters:
        members = set(r.members(c.label))
        assert len(members) == c.size
        assert c.representatives and set(c.representatives) <= members
        # the first representative is the member nearest the centre
        M = X[[int(i[1:]) for i in members]]
        nearest = min(members, key=lambda i: float(((X[int(i[1:])] - c.center) ** 2).sum()))
        assert c.representatives[0] == nearest
        np.testing.assert_allclose(c.center, M.mean(axis=0), atol=0.5)


def test_cluster_of_a_filtered_subset(client, blobs):
    X, y = blobs
    fill(client, X, y)
    r = client.cluster("b", bandwidth=2.5, filter={"half": 1})
    assert len(r.ids) == 1500 and all(int(i[1:]) % 2 == 1 for i in r.ids)


def test_estimated_bandwidth_and_cluster_all_false(client, blobs):
    X, y = blobs
    fill(client, X, y)
    from sklearn.cluster import estimate_bandwidth

    r = client.cluster("b", cluster_all=False, bandwidth=None)
    sk_bw = estimate_bandwidth(X, quantile=0.3)
    assert abs(r.bandwidth - sk_bw) <= 0.1 * sk_bw
    order = [int(i[1:]) for i in r.ids]
    assert adjusted_rand_score(sklearn_labels(float(sk_bw), False)[order], r.labels) >= 0.95


def test_cluster_errors(client, blobs):
    X, y = blobs
    with pytest.raises(clients.NotFound, match="'nope'"):
        client.cluster("nope", bandwidth=1.0)
    client.create_collection("empty", dim=4)
    with pytest.raises(clients.FailedPrecondition, match="no items"):
        client.cluster("empty", bandwidth=1.0)
    fill(client, X, y)
    with pytest.raises(clients.InvalidArgument, match="kernel"):
        client.cluster("b", bandwidth=1.0, kernel="epanechnikov")
    with pytest.raises(clients.InvalidArgument, match="bandwidth"):
        client.cluster("b", bandwidth=-1.0)


def test_duplicate_vectors_cluster_with_an_estimated_bandwidth_of_zero(client):
    # 3 distinct vectors, 10 copies each: the estimated bandwidth is 0 and, as scikit-learn, every distinct
    # vector is its own cluster (this was refused with INVALID_ARGUMENT)
    X = np.repeat(np.eye(3, 4, dtype=np.float32) * 5, 10, axis=0)
    client.create_collection("dup", dim=4)
    client.upsert("dup", [f"d{i}" for i in range(30)], X)
    r = client.cluster("dup", bandwidth=None)
    assert r.bandwidth == 0 and sorted(c.size for c in r.clusters) == [10, 10, 10]
    for c in r.clusters:
        assert len({int(i[1:]) // 10 for i in r.members(c.label)}) == 1
        np.testing.assert_array_equal(c.center, X[int(c.representatives[0][1:])])


def test_a_bandwidth_out_of_range_is_invalid_argument(client, blobs):
    X, y = blobs
    fill(client, X[:300], y[:300])
    for bandwidth in (float("nan"), float("inf"), 0.0):   # scikit-learn's constraint: a float in (0, inf)
        with pytest.raises(clients.InvalidArgument, match=r"'bandwidth' parameter of MeanShift"):
            client.cluster("b", bandwidth=bandwidth)


def test_a_cluster_over_the_vector_budget_is_refused_before_loading(tmp_path, blobs):
    from simdex.limits import Limits
    from simdex.server.app import create_server
    from simdex.service.facade import Simdex

    X, y = blobs                                   # 3000 x 4 float32: 0.046 MB; a filter keeping half fits
    service = Simdex(tmp_path / "data", snapshot_interval=0, limits=Limits(max_cluster_mb=0.03))
    server, port, _ = create_server(service, "127.0.0.1:0")
    server.start()
    try:
        with clients.Client(f"127.0.0.1:{port}") as c:
            fill(c, X, y)
            with pytest.raises(clients.ResourceExhausted, match=r"3,000 vectors of dim 4.*--max-cluster-mb"):
                c.cluster("b", bandwidth=2.5)
            assert len(c.cluster("b", bandwidth=2.5, filter={"half": 1}).ids) == 1500
    finally:
        server.stop(grace=None).wait()
        service.close()


def test_a_page_after_the_collection_changed_is_refused(client, blobs):
    from simdex.types import ClusterSpec

    X, y = blobs
    fill(client, X, y)
    spec = ClusterSpec(bandwidth=2.5)
    first, token = client._transport.cluster("b", spec, 1000, "")  # one page, as the Client asks for it
    assert token and len(first.ids) == len(first.labels) == 1000 and first.n_points == 3000
    client.upsert("b", ["new"], X[:1])
    with pytest.raises(clients.FailedPrecondition, match="changed since the first page"):
        client._transport.cluster("b", spec, 1000, token)


def test_a_bare_cluster_request_takes_the_defaults_and_pages_over_the_wire(remote, stub, blobs):
    from simdex.proto import simdex_pb2 as pb

    X, y = blobs
    fill(remote, X, y)
    pages, token = [], ""
    while True:
        page = stub.Cluster(pb.ClusterRequest(collection="b", bandwidth=2.5, page_size=1000, page_token=token))
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [len(p.member_ids) for p in pages] == [1000, 1000, 1000] and {p.n_points for p in pages} == {3000}
    assert all(len(c.representatives) == 5 for c in pages[0].clusters if c.size >= 5)  # the default
    whole = remote.cluster("b", bandwidth=2.5, page_size=1000)
    assert whole.n_points == 3000 and whole.ids == [i for p in pages for i in p.member_ids]


def test_cli_cluster_writes_summary_labels_and_a_plot(server, remote, blobs, tmp_path, capsys):
    X, y = blobs
    fill(remote, X, y)
    png, labels = tmp_path / "c.png", tmp_path / "labels.jsonl"
    assert cli.main(["cluster", "b", "--bandwidth", "2.5", "--plot", str(png), "--labels", str(labels),
                     "--plot-points", "1000", "--target", server.target]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_points"] == 3000 and len(summary["clusters"]) >= 6
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(rows) == 3000 and {r["cluster"] for r in rows} == {c["label"] for c in summary["clusters"]}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
