"""The service's gates, unit by unit and through the facade on SQLite and PostgreSQL: what the store cannot hold
(deep JSON, integers past 64 bits, non-finite numbers, NUL, lone surrogates, over-long text) is INVALID_ARGUMENT
naming the item and nothing is written; names match whole; vectors whose distances would overflow float32 are
refused, and vectors just under that bound search with finite distances on every metric."""
import json

import faiss
import numpy as np
import pytest

from simdex.errors import InvalidArgument
from simdex.service import validation as v
from simdex.store import filters
from simdex.wire import MAX_SQ_NORM, as_matrix


def nested(depth: int, leaf: str = "1") -> str:
    """A metadata object whose value nests `depth` levels in all (the object itself is level 1)."""
    return '{"a": ' + "[" * (depth - 1) + leaf + "]" * (depth - 1) + "}"


# ---- metadata (class 4) --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, v.MAX_JSON_DEPTH])
def test_metadata_nested_up_to_the_maximum_is_accepted(depth):
    assert v.check_metadata([nested(depth)], 1)[0]["a"] is not None


@pytest.mark.parametrize("depth", [v.MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_metadata_nested_deeper_is_invalid_argument(depth):
    with pytest.raises(InvalidArgument, match=f"deeper than {v.MAX_JSON_DEPTH}") as exc:
        v.check_metadata(["{}", nested(depth)], 2)
    assert exc.value.item == 1 and "metadata[1]" in exc.value.message


def test_deep_dicts_from_in_process_callers_are_invalid_argument():
    deep: dict = {}
    for _ in range(100_000):
        deep = {"a": deep}
    with pytest.raises(InvalidArgument, match="deeper than"):
        v.check_metadata([deep], 1)


UNSTORABLE_METADATA = [
    ('{"a": 9223372036854775808}', "64-bit"), ('{"a": -9223372036854775809}', "64-bit"),
    ('{"a": [1, ' + "9" * 400 + "]}", "digits"), ('{"a": 1e400}', "non-finite"), ('{"a": -1e400}', "non-finite"),
    ('{"a": NaN}', "NaN"), ('{"a": "x\\u0000y"}', "NUL"), ('{"a\\u0000": 1}', "NUL"), ('{"a": "\\ud800"}', "surrogate"),
    ('{"\\udfff": 1}', "surrogate"), ('{"a": {"b": ["x\\udc80"]}}', r"\$\.a\.b\[0\]"),
]


@pytest.mark.parametrize("text,problem", UNSTORABLE_METADATA, ids=[t for t, _ in UNSTORABLE_METADATA])
def test_metadata_the_store_cannot_hold_is_invalid_argument(text, problem):
    with pytest.raises(InvalidArgument, match=problem) as exc:
        v.check_metadata([text], 1)
    assert exc.value.item == 0


def test_metadata_at_the_edges_of_what_the_store_holds_is_accepted():
    text = json.dumps({"a": 2 ** 63 - 1, "b": -(2 ** 63), "c": 1.7976931348623157e308, "d": 5e-324,
                       "e": "\U0001f600 \u202e e\u0301 \ufeff", "f": [None, True, {"g": ""}]}, ensure_ascii=True)
    assert v.check_metadata([text], 1)[0]["e"].startswith("\U0001f600")


# ---- ids, hashes, fingerprints, index descriptions: the columns' sizes (class 4) ------------------------------
@pytest.mark.parametrize("bad,problem", [("a\x00", "NUL"), ("\ud800", "surrogate"), ("x" * 513, "longer than the 512"),
                                         ("", "non-empty"), (7, "non-empty")])
def test_ids_the_store_cannot_hold_are_invalid_argument_naming_the_item(bad, problem):
    with pytest.raises(InvalidArgument, match=problem) as exc:
        v.check_ids(["ok", bad])
    assert exc.value.item == 1


def test_the_text_limits_are_the_columns_sizes():
    assert (v.MAX_ID_LEN, v.MAX_HASH_LEN, v.MAX_FINGERPRINT_LEN, v.MAX_INDEX_LEN) == (512, 128, 128, 256)
    from simdex.index.ann import MAX_DESC_LEN  # index/ cannot read the table (layers): its copy must agree

    assert MAX_DESC_LEN == v.MAX_INDEX_LEN
    assert v.check_ids(["x" * 512]) == ["x" * 512]


def test_content_hashes_fingerprints_and_index_descriptions_fit_their_columns():
    assert v.check_hashes([], 3) == [] and v.check_hashes(["h" * 128], 1) == ["h" * 128]
    for bad in (["h" * 129], ["a\x00"], [""]):
        with pytest.raises(InvalidArgument, match="content_hashes"):
            v.check_hashes(bad, 1)
    with pytest.raises(InvalidArgument, match="one per id"):
        v.check_hashes(["h"], 2)
    assert v.check_fingerprint("") == "" and v.check_fingerprint("f" * 128) == "f" * 128
    with pytest.raises(InvalidArgument, match="embedder_fingerprint"):
        v.check_fingerprint("f" * 129)
    with pytest.raises(InvalidArgument, match="index"):
        v.check_index_desc("IVF" + "0" * 300 + "1,Flat")


# ---- names match whole (class 7) -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tn\n", "tn\nx", "\ntn", "tn\r", "t n", "x" * 129, "é"])
def test_names_match_whole(name):
    with pytest.raises(InvalidArgument, match="name"):
        v.check_name(name)
    assert v.check_name("tn") == "tn"
    assert v.NAME_RE.match(name) is None  # whole even through re.match, for any caller


@pytest.mark.parametrize("field", ["age\n", "age\nx", "\nage"])
def test_filter_field_names_match_whole(field):
    with pytest.raises(InvalidArgument, match="field name"):
        filters.parse({field: 1})


# ---- vectors: the float32 range of distances (class 6) -------------------------------------------------------
def test_vectors_whose_distances_overflow_float32_are_refused_naming_the_row():
    x = np.ones((3, 4), np.float32)
    x[2, 0] = 1e20
    with pytest.raises(InvalidArgument, match="row 2 has squared L2 norm 1e\\+40") as exc:
        as_matrix(x, "vectors", 4)
    assert exc.value.item == 2


def test_the_norm_is_summed_in_float64_where_float32_would_overflow():
    row = np.full((1, 4), np.sqrt(MAX_SQ_NORM / 4) * 1.01, np.float32)  # each square fits, their sum does not
    with pytest.raises(InvalidArgument, match="row 0 has squared L2 norm"):
        as_matrix(row)
    assert as_matrix(row / 1.02).shape == (1, 4)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_keep_their_message(value):
    with pytest.raises(InvalidArgument, match="row 1 holds NaN or infinity"):
        as_matrix(np.array([[0, 0], [value, 0]], np.float32))


def test_vectors_at_the_bound_have_finite_faiss_distances():
    s = np.sqrt(MAX_SQ_NORM * 0.999 / 4)
    x = as_matrix(np.array([[s, s, s, s], [-s, -s, -s, -s]], np.float32))
    for index in (faiss.IndexFlatL2(4), faiss.IndexFlatIP(4)):
        index.add(x)
        D, _ = index.search(x, 2)
        assert np.isfinite(D).all()


# ---- through the facade, on SQLite and PostgreSQL: refused, nothing written ----------------------------------
@pytest.fixture
def col(service):
    service.create_collection("c", 4)
    service.upsert("c", ["a"], np.ones((1, 4), np.float32), ['{"x": 1}'])
    return service


BAD_UPSERTS = {
    "deep metadata": dict(metadata=[nested(100_000)]),
    "integer past 64 bits": dict(metadata=['{"x": ' + "1" * 401 + "}"]),
    "1e400": dict(metadata=['{"x": 1e400}']),
    "NUL in metadata": dict(metadata=['{"x": "a\\u0000"}']),
    "lone surrogate in metadata": dict(metadata=['{"x": "\\ud800"}']),
    "NUL in id": dict(ids=["n\x00"]),
    "lone surrogate in id": dict(ids=["n\ud800"]),
    "over-long id": dict(ids=["n" * 513]),
    "huge vector": dict(vectors=np.full((1, 4), 1e20, np.float32)),
}


@pytest.mark.parametrize("case", list(BAD_UPSERTS))
def test_bad_upserts_are_invalid_argument_and_write_nothing(col, case):
    args = {"ids": ["n"], "vectors": np.ones((1, 4), np.float32), "metadata": (), **BAD_UPSERTS[case]}
    with pytest.raises(InvalidArgument):
        col.upsert("c", args["ids"], args["vectors"], args["metadata"])
    assert col.count("c") == 1 and col.count("c", {"x": {"$gte": 0}}) == 1


@pytest.mark.parametrize("bad", ["a\x00", "\ud800", "a" * 513])
def test_get_and_delete_of_ids_the_store_cannot_hold_are_invalid_argument(col, bad):
    with pytest.raises(InvalidArgument):
        col.get("c", [bad])
    with pytest.raises(InvalidArgument):
        col.delete("c", [bad], ignore_missing=True)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_vectors_under_the_bound_search_with_finite_distances_on_every_metric(service, metric):
    s = np.float32(np.sqrt(MAX_SQ_NORM * 0.999 / 4))
    service.create_collection("m", 4, metric=metric)
    service.upsert("m", ["big", "neg", "one"], np.array([[s] * 4, [-s] * 4, [1, 0, 0, 0]], np.float32))
    hits, _ = service.search("m", np.array([[s] * 4, [1, 0, 0, 0]], np.float32), 3)
    for h in hits:
        assert sorted(h.ids) == ["big", "neg", "one"] and np.isfinite(h.distances).all()
    with pytest.raises(InvalidArgument, match="squared L2 norm"):
        service.upsert("m", ["huge"], np.full((1, 4), 1e20, np.float32))
