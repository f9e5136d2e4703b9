"""The service facade returns the shared simdex.types values and issues its own page tokens."""
import numpy as np
import pytest

from simdex import types
from simdex.errors import InvalidArgument


def test_names_must_match_whole_with_no_trailing_newline(sqlite_service):
    with pytest.raises(InvalidArgument, match="name 'a\\\\n' is invalid"):
        sqlite_service.create_collection("a\n", 4)
    assert sqlite_service.create_collection("a.b-c_d", 4).name == "a.b-c_d"


def test_results_are_the_shared_types(sqlite_service):
    s = sqlite_service
    info = s.create_collection("t", 4)
    assert type(info) is types.CollectionInfo and (info.count, info.dim, info.metric) == (0, 4, "l2")
    s.upsert("t", ["a", "b"], np.eye(4, dtype=np.float32)[:2], [{"y": 1}, {"y": 2}])
    assert [type(c) for c in s.list_collections()] == [types.CollectionInfo]
    (item,) = s.get("t", ["b"])
    assert type(item) is types.Item and item.metadata == {"y": 2}
    np.testing.assert_array_equal(item.vector, [0, 1, 0, 0])
    assert all(type(e) is types.EmbedderInfo for e in s.list_embedders())


def test_range_pages_carry_the_services_tokens(sqlite_service):
    s = sqlite_service
    x = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    s.create_collection("r", 2)
    s.upsert("r", [f"r{i:02d}" for i in range(20)], x)
    ids, token = [], ""
    while True:
        (h,), _ = s.search("r", x[:1], radius=1e6, page_size=7, page_token=token)
        assert len(h.ids) == len(h.distances) <= 7 and h.distances.dtype == np.float32
        ids += h.ids
        token = h.next_page_token
        if not token:
            break
    assert ids == [f"r{i:02d}" for i in range(20)]
    (h,), _ = s.search("r", x[:1], k=3)
    assert h.next_page_token == "" and h.ids == ["r00", "r01", "r02"]


def test_cluster_returns_one_page_of_members_and_the_next_token(sqlite_service):
    s = sqlite_service
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))]).astype(np.float32)
    s.create_collection("c", 2)
    s.upsert("c", [f"c{i:02d}" for i in range(60)], x)
    spec = types.ClusterSpec(bandwidth=1.0)
    first, token = s.cluster("c", spec, page_size=25)
    assert type(first) is types.ClusterResult and len(first.clusters) == 2
    assert (len(first.ids), len(first.labels), first.n_points) == (25, 25, 60) and token
    ids, labels = list(first.ids), list(first.labels)
    while token:
        page, token = s.cluster("c", spec, page_size=25, page_token=token)
        ids += page.ids
        labels += list(page.labels)
    assert ids == [f"c{i:02d}" for i in range(60)]
    assert len(set(labels[:30])) == len(set(labels[30:])) == 1 and labels[0] != labels[30]


def test_heads_answer_with_head_info_and_prediction(sqlite_service):
    s = sqlite_service
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    x = (rng.standard_normal((200, 4)) + 3 * y[:, None]).astype(np.float32)
    s.create_collection("h", 4)
    s.upsert("h", [f"h{i:03d}" for i in range(200)], x, [{"y": ["no", "yes"][v]} for v in y])
    info = s.train_head(types.HeadSpec("h", "clf", label_field="y"))
    assert type(info) is types.HeadInfo and info.classes == ["no", "yes"] and info.version == 1
    assert [h.name for h in s.list_heads("h")] == ["clf"] and type(s.get_head("clf")) is types.HeadInfo
    p = s.predict("clf", vectors=x[:4])
    assert type(p) is types.Prediction and p.version == 1 and p.vectors is None
    assert p.labels == [p.classes[i] for i in p.label_indices.tolist()] == [["no", "yes"][v] for v in y[:4]]
    assert p.probabilities.shape == (4, 2) and p.label_indices.dtype == np.int64
