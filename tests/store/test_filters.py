"""Metadata filters: SQL (SQLite and PostgreSQL) against a Python oracle of the documented grammar."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simdex.errors import InvalidArgument
from simdex.store import filters

VALUES = [0, 1, 2, 3.5, -1, "CT", "MR", "", "ct", True, False, None]


def make_meta(i: int) -> dict:
    rng = np.random.default_rng(i)
    m = {}
    if i % 7:
        m["modality"] = ["CT", "MR", "US", "ct"][i % 4]
    if i % 5:
        m["age"] = int(rng.integers(0, 100)) if i % 3 else float(rng.integers(0, 100)) + 0.5
    if i % 11 == 0:
        m["age"] = "unknown"  # wrong type on purpose
    m["flag"] = bool(i % 2) if i % 13 else None
    return m


def _eq(have, v):
    if v is None:
        return have is None
    if isinstance(v, bool) or isinstance(have, bool):
        return isinstance(have, bool) and isinstance(v, bool) and have == v
    if isinstance(v, (int, float)):
        return isinstance(have, (int, float)) and have == v
    return isinstance(have, str) and have == v


MISSING = object()


def matches(meta: dict, spec: dict) -> bool:
    for field, rule in spec.items():
        have = meta.get(field, MISSING)
        rules = rule if isinstance(rule, dict) else {"$eq": rule}
        for op, v in rules.items():
            if op == "$eq":
                ok = have is not MISSING and _eq(have, v)
            elif op == "$in":
                ok = have is not MISSING and any(_eq(have, x) for x in v)
            elif op == "$ne":
                ok = have is MISSING or not _eq(have, v)
            else:
                if have is MISSING or isinstance(have, bool) or have is None:
                    ok = False
                elif isinstance(v, str):
                    ok = isinstance(have, str) and {"$gt": have > v, "$gte": have >= v,
                                                    "$lt": have < v, "$lte": have <= v}[op]
                else:
                    ok = isinstance(have, (int, float)) and {"$gt": have > v, "$gte": have >= v,
                                                             "$lt": have < v, "$lte": have <= v}[op]
            if not ok:
                return False
    return True


N = 300


@pytest.fixture
def filled(service):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    metas = [make_meta(i) for i in range(N)]
    service.create_collection("f", 8)
    service.upsert("f", [f"i{i}" for i in range(N)], x, [json.dumps(m) for m in metas])
    return service, x, metas


FIXED = [
    {"modality": "CT"},
    {"modality": {"$in": ["CT", "MR"]}},
    {"modality": {"$ne": "CT"}},
    {"age": {"$gte": 40, "$lt": 60}},
    {"age": {"$gt": 50.5}},
    {"age": 3},
    {"age": "unknown"},
    {"flag": True},
    {"flag": None},
    {"flag": {"$ne": False}},
    {"modality": "CT", "age": {"$lte": 30}},
    {"modality": {"$gte": "MR"}},
    {"nothere": {"$ne": 1}},
    {"nothere": 1},
]


@pytest.mark.parametrize("spec", FIXED, ids=[json.dumps(f) for f in FIXED])
def test_count_and_search_follow_the_grammar(filled, spec):
    service, x, metas = filled
    want = {f"i{i}" for i, m in enumerate(metas) if matches(m, spec)}
    assert service.count("f", json.dumps(spec)) == len(want)
    hits, _ = service.search("f", x[:5], 10, filter=json.dumps(spec))
    for h in hits:
        assert set(h.ids) <= want
        assert len(h.ids) == min(10, len(want))


scalars = st.sampled_from(VALUES)
rules = st.one_of(
    scalars,
    st.fixed_dictionaries({"$in": st.lists(scalars, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"$ne": scalars}),
    st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                    st.one_of(st.integers(-5, 105), st.sampled_from(["CT", "MR", "a", "z"])), min_size=1),
)
specs = st.dictionaries(st.sampled_from(["modality", "age", "flag", "other"]), rules, min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_random_filters_match_the_python_oracle(filled, spec):
    service, _, metas = filled
    want = sum(matches(m, spec) for m in metas)
    assert service.count("f", json.dumps(spec)) == want, spec


BAD = [
    "not json", "[1, 2]", '{"a": {"$regex": "x"}}', '{"a": {"$in": []}}', '{"a": {"$in": 3}}',
    '{"a": {"$gt": true}}', '{"a": [1, 2]}', '{"a": {}}', '{"bad field!": 1}', '{"a": {"$gt": {"x": 1}}}',
]


@pytest.mark.parametrize("text", BAD)
def test_malformed_filters_are_invalid_argument_naming_the_problem(text):
    with pytest.raises(InvalidArgument, match="filter"):
        filters.parse(text)
