"""simdex.convert: every domain value survives proto and back; absent proto fields take simdex.defaults."""
import numpy as np
import pytest

from simdex import convert, defaults
from simdex.errors import InvalidArgument, NotFound
from simdex.proto import simdex_pb2 as pb
from simdex.types import (
    Cluster, ClusterResult, ClusterSpec, CollectionInfo, EmbedderInfo, Embedding, HeadInfo, HeadSpec, Item,
    Prediction, SearchParams, UpsertChunk,
)

RNG = np.random.default_rng(0)


def test_collection_embedder_and_head_round_trip():
    c = CollectionInfo("c", 8, "cosine", "HNSW32", 5, True, 9, 1700000000000, "vgg16-fc6", "sha256:ab")
    assert convert.collection_from_pb(convert.collection_to_pb(c)) == c
    e = EmbedderInfo("vgg16-fc6", "image", 4096, "VGG-16 fc6", True, "/w/vgg.pth", "sha256:cd")
    assert convert.embedder_from_pb(convert.embedder_to_pb(e)) == e
    h = HeadInfo("h", "c", "logistic", 2, [3, "cat", 1.5], {"accuracy": 0.9, "confusion": [[1, 0], [0, 1]]},
                 1700000000000, 40, "sha256:ab", "", 8, 3, {"label_field": "y", "C": 0.5, "note": "é"})
    assert convert.head_from_pb(convert.head_to_pb(h)) == h


def test_items_round_trip_with_and_without_vectors():
    items = [Item("a", RNG.standard_normal(4).astype(np.float32), {"x": 1, "s": "é"}, "h1"),
             Item("b", RNG.standard_normal(4).astype(np.float32), {}, "h2")]
    back = convert.items_from_pb(convert.items_to_pb(items, True), True)
    assert [(i.id, i.metadata, i.content_hash) for i in back] == [(i.id, i.metadata, i.content_hash) for i in items]
    for got, want in zip(back, items):
        np.testing.assert_array_equal(got.vector, want.vector)
        assert got.vector.flags.writeable
    bare = convert.items_from_pb(convert.items_to_pb(items, False), False)
    assert [i.vector for i in bare] == [None, None]


def test_upsert_messages_round_trip_and_are_checked():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    chunk = UpsertChunk(["a", "b"], x, ['{"k": 1}', "{}"], ["", ""], fingerprint="sha256:ab")
    back = convert.upsert_from_pb(convert.upsert_to_pb("c", chunk), 0)
    assert (back.ids, back.metadata, back.content_hashes, back.fingerprint) == (
        chunk.ids, chunk.metadata, chunk.content_hashes, chunk.fingerprint)
    np.testing.assert_array_equal(back.vectors, x)
    bare = convert.upsert_from_pb(pb.UpsertRequest(collection="c", ids=["a"], texts=["hello"]), 3)
    assert bare.metadata == [""] and bare.content_hashes == [""] and bare.texts == ["hello"] and bare.vectors is None
    with pytest.raises(InvalidArgument, match="upsert message 3: 2 texts for 1 ids"):
        convert.upsert_from_pb(pb.UpsertRequest(collection="c", ids=["a"], texts=["x", "y"]), 3)
    with pytest.raises(InvalidArgument, match="exactly one of vectors, images or texts"):
        convert.upsert_from_pb(pb.UpsertRequest(collection="c", ids=["a"]), 0)


def test_search_request_and_answer_round_trip():
    xq = RNG.standard_normal((2, 4)).astype(np.float32)
    params = SearchParams(nprobe=8, ef_search=64, k_factor=2)
    req = convert.search_request_to_pb("c", xq, 5, radius=0.5, filter='{"a": 1}', params=params,
                                       include_metadata=True, page_size=10, page_token="t", head="h")
    kw = convert.search_request_from_pb(req)
    np.testing.assert_array_equal(kw.pop("queries"), xq)
    assert kw == dict(name="c", k=5, radius=0.5, filter='{"a": 1}', params=params, page_size=10, page_token="t",
                      include_metadata=True, head="h", images=[], texts=[])
    assert convert.search_request_from_pb(convert.search_request_to_pb("c", xq, 3))["radius"] is None
    raw = convert.search_request_from_pb(convert.search_request_to_pb("c", None, 3, texts=["q"]))
    assert raw["queries"] is None and raw["texts"] == ["q"]
    hits = [convert.QueryHits(["a", "b"], np.array([0.5, 0.25], np.float32), "next"),
            convert.QueryHits([], np.zeros(0, np.float32))]
    texts = convert.metadata_texts([[{"x": 1}, {}], []])
    got, metas = convert.search_response_from_pb(convert.search_response_to_pb(hits, texts), True)
    assert [(h.ids, h.distances.tolist(), h.next_page_token) for h in got] == [
        (["a", "b"], [0.5, 0.25], "next"), ([], [], "")]
    assert metas == [[{"x": 1}, {}], []]
    assert convert.search_response_from_pb(convert.search_response_to_pb(hits, None), False)[1] is None


def test_cluster_request_round_trip_and_defaults():
    spec = ClusterSpec(filter='{"a": 1}', bandwidth=1.5, kernel="gaussian", bin_seeding=True, min_bin_freq=3,
                       cluster_all=False, max_iter=50, max_seeds=None, representatives=2)
    assert convert.cluster_request_from_pb(convert.cluster_request_to_pb("c", spec, 10, "t")) == (spec, 10, "t")
    assert convert.cluster_request_from_pb(convert.cluster_request_to_pb("c", ClusterSpec())) == (ClusterSpec(), 0, "")
    bare, _, _ = convert.cluster_request_from_pb(pb.ClusterRequest(collection="c"))
    assert bare == ClusterSpec() == ClusterSpec(
        kernel=defaults.CLUSTER_KERNEL, min_bin_freq=defaults.CLUSTER_MIN_BIN_FREQ, max_iter=defaults.CLUSTER_MAX_ITER,
        max_seeds=defaults.CLUSTER_MAX_SEEDS, representatives=defaults.CLUSTER_REPRESENTATIVES)


def test_cluster_answer_round_trip():
    centre = RNG.standard_normal(3).astype(np.float32)
    page = ClusterResult([Cluster(0, 2, centre, ["a", "b"])], ["a", "b", "c"], np.array([0, 0, -1], np.int32), 1.25,
                         7, 10)
    back, token = convert.cluster_response_from_pb(convert.cluster_response_to_pb(page, "next"))
    assert token == "next" and (back.ids, back.labels.tolist(), back.bandwidth, back.n_iter, back.n_points) == (
        page.ids, page.labels.tolist(), page.bandwidth, page.n_iter, 10)
    assert back.labels.dtype == np.int32 and back.clusters[0].representatives == ["a", "b"]
    np.testing.assert_array_equal(back.clusters[0].center, centre)


def test_head_spec_round_trip_and_defaults():
    spec = HeadSpec("c", "h", kind="projection", filter='{"a": 1}', test_fraction=0.3, balanced=True,
                    target_collection="t", params={"alpha": 2.0})
    assert convert.head_spec_from_pb(convert.head_spec_to_pb(spec)) == spec
    labelled = HeadSpec("c", "h", labels={"a": 1, "b": "cat"})
    assert convert.head_spec_from_pb(convert.head_spec_to_pb(labelled)) == labelled
    bare = convert.head_spec_from_pb(pb.TrainHeadRequest(collection="c", head="h"))
    assert bare == HeadSpec("c", "h") and bare.test_fraction == defaults.HEAD_TEST_FRACTION
    assert bare.kind == defaults.HEAD_KIND
    with pytest.raises(InvalidArgument,
                       match=r"labels must be a JSON object encoded as text, got '\[1\]' \(a JSON list\)"):
        convert.head_spec_from_pb(pb.TrainHeadRequest(collection="c", head="h", labels="[1]"))
    with pytest.raises(InvalidArgument,
                       match=r"params must be a JSON object encoded as text, got '\{oops' \(not valid JSON"):
        convert.head_spec_from_pb(pb.TrainHeadRequest(collection="c", head="h", params="{oops"))


def test_predictions_and_embeddings_round_trip():
    P = RNG.random((3, 2)).astype(np.float32)
    p = Prediction([1, "b"], ["b", 1, "b"], P, None, 4, np.array([1, 0, 1], np.int64))
    back = convert.prediction_from_pb(convert.prediction_to_pb(p))
    assert (back.classes, back.labels, back.vectors, back.version) == (p.classes, p.labels, None, 4)
    np.testing.assert_array_equal(back.probabilities, P)
    assert back.label_indices.dtype == np.int64 and back.label_indices.tolist() == [1, 0, 1]
    V = RNG.standard_normal((2, 5)).astype(np.float32)
    proj = convert.prediction_from_pb(convert.prediction_to_pb(Prediction([], None, None, V, 2)))
    assert proj.labels is None and proj.probabilities is None and proj.version == 2
    np.testing.assert_array_equal(proj.vectors, V)
    e = Embedding(V, "sha256:ab", np.array([0, 0], np.int64), np.array([0, 1], np.int64), [{"Modality": "CT"}, {}])
    eb = convert.embedding_from_pb(convert.embedding_to_pb(e))
    np.testing.assert_array_equal(eb.vectors, V)
    assert (eb.fingerprint, eb.item_index.tolist(), eb.frame_index.tolist(), eb.metadata) == (
        "sha256:ab", [0, 0], [0, 1], [{"Modality": "CT"}, {}])


def test_errors_keep_their_item_across_the_wire():
    err = InvalidArgument("images[3]: cannot decode", item=3)
    back = convert.error_from_status(err.code, err.message, convert.error_metadata(err))
    assert type(back) is InvalidArgument and back.item == 3 and back.message == err.message
    whole = convert.error_from_status("NOT_FOUND", "collection 'x' not found", convert.error_metadata(NotFound("x")))
    assert type(whole) is NotFound and whole.item is None
    assert convert.error_from_status("INVALID_ARGUMENT", "m", [("simdex-item", "junk")]).item is None


def test_metadata_texts_and_the_search_answers_least_size():
    shared = {"name": "é" * 3, "n": 1}
    hits = [convert.QueryHits(["a", "bb"], np.array([0.5, 0.25], np.float32), "tok"),
            convert.QueryHits([], np.zeros(0, np.float32))]
    texts = convert.metadata_texts([[shared, shared], []])
    assert texts == [['{"name": "ééé", "n": 1}'] * 2, []] and texts[0][0] is texts[0][1]  # one dump per dict
    assert convert.metadata_texts(None) is None
    for t in (texts, None):
        resp = convert.search_response_to_pb(hits, t)
        assert convert.search_response_min_bytes(hits, t) <= resp.ByteSize()
    back, metas = convert.search_response_from_pb(convert.search_response_to_pb(hits, texts), True)
    assert metas == [[shared, shared], []]
