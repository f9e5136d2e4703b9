"""The service's limits and the gates its entries share: names, ids, metadata, content hashes, search knobs.

Every check raises InvalidArgument with a message that names the bad value (and, for one item of a batch, its
position as `err.item`); none of them asserts. What reaches the store fits its columns (the lengths are read
from simdex.store.tables, so the two cannot drift) and holds only values the database stores and compares:
text without NUL or lone surrogates, integers in the signed 64-bit range, finite floats, and JSON nested at most
MAX_JSON_DEPTH deep (store.filters.scalar_problem).
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from simdex.errors import InvalidArgument, not_a_json_object
from simdex.store.filters import INT64_MAX, INT64_MIN, scalar_problem, text_problem
from simdex.store.tables import CollectionRow, ItemRow
from simdex.types import SearchParams

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")  # \A..\Z: whole even through re.match
MAX_ID_LEN = ItemRow.__table__.c.external_id.type.length                    # 512 characters
MAX_HASH_LEN = ItemRow.__table__.c.content_hash.type.length                 # 128
MAX_FINGERPRINT_LEN = ItemRow.__table__.c.embedder_fingerprint.type.length  # 128
MAX_INDEX_LEN = CollectionRow.__table__.c.index_desc.type.length            # 256
MAX_JSON_DEPTH = 64       # nesting of one item's metadata (SQLite's JSON functions stop at 1000)
MAX_K = 10_000
DEFAULT_PAGE = 1000       # range-search hits per page when the request names no page_size
MAX_PAGE = 100_000
MAX_PARAM = 1_000_000     # nprobe, efSearch and k_factor
METRICS = ("l2", "ip", "cosine")
MAX_EMBED = 4096  # raw items per Embed call


def check_name(name: str, what: str = "collection") -> str:
    """Collection and head names: 1-128 of letters, digits, '_', '-', '.', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} name {name!r} is invalid: 1-128 characters of letters, digits, '_', '-', '.', "
            "starting with a letter or digit")
    return name


def check_text(value: str, what: str, max_len: int, item: int | None = None) -> str:
    """A non-empty str of at most `max_len` characters that the database can store (no NUL, no lone surrogate)."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what}: expected a non-empty string, got {value!r}", item=item)
    if len(value) > max_len:
        raise InvalidArgument(f"{what}: {len(value)} characters, longer than the {max_len} the store keeps "
                              f"(starts {value[:40]!r})", item=item)
    problem = text_problem(value)
    if problem:
        raise InvalidArgument(f"{what}: {value[:80]!r} {problem}", item=item)
    return value


def check_ids(ids, what: str = "ids", unique: bool = True) -> list[str]:
    """A non-empty batch of ids (non-empty strings of at most MAX_ID_LEN characters, storable text), distinct
    when `unique`."""
    ids = list(ids)
    if not ids:
        raise InvalidArgument(f"{what}: empty batch; give at least one id")
    for i, v in enumerate(ids):
        if not isinstance(v, str) or not v:
            raise InvalidArgument(f"{what}[{i}]: ids must be non-empty strings, got {v!r}", item=i)
        check_text(v, f"{what}[{i}]", MAX_ID_LEN, item=i)
    if unique and len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(v for v in ids if v in seen or seen.add(v))
        raise InvalidArgument(f"{what}: id {dup!r} appears more than once in one request")
    return ids


def check_hashes(hashes: Sequence[str], n: int) -> list[str]:
    """Content hashes: none at all, or one non-empty string of at most MAX_HASH_LEN characters per item."""
    hashes = list(hashes)
    if not hashes:
        return []
    if len(hashes) != n:
        raise InvalidArgument(f"content_hashes: got {len(hashes)} for {n} ids; give one per id or none")
    return [check_text(h, f"content_hashes[{i}]", MAX_HASH_LEN, item=i) for i, h in enumerate(hashes)]


def check_fingerprint(fingerprint: str) -> str:
    """An embedder fingerprint sent with vectors: "" (none) or storable text of at most MAX_FINGERPRINT_LEN."""
    return fingerprint and check_text(fingerprint, "embedder_fingerprint", MAX_FINGERPRINT_LEN)


def check_index_desc(desc: str) -> str:
    """An index description short enough for the collections table (the FAISS check is index.ann's)."""
    return check_text(desc, "index", MAX_INDEX_LEN)


def json_problem(obj: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Where and why a parsed JSON value cannot be stored (None when it can): nesting deeper than `max_depth`,
    keys or scalars per store.filters. Iterative, so no input can exhaust the stack; a value's path is only
    spelled out for the message."""
    if not isinstance(obj, (dict, list)):
        problem = scalar_problem(obj)
        return f"at $: {problem}" if problem else None
    stack = [(obj, None, 1)]  # (container, its path as a (parent path, key) chain, its depth)
    while stack:
        v, where, depth = stack.pop()
        if depth > max_depth:
            return f"at {_path(where)}: nested deeper than {max_depth} levels"
        is_dict = isinstance(v, dict)
        for k, x in (v.items() if is_dict else enumerate(v)):
            if is_dict:
                problem = text_problem(k)
                if problem:
                    return f"at {_path(where)}: key {k[:40]!r} {problem}"
            t = type(x)
            if t is dict or t is list:
                stack.append((x, (where, k), depth + 1))
            elif t is float or t is str or (t is int and not INT64_MIN <= x <= INT64_MAX):  # fast path: small ints
                problem = scalar_problem(x)
                if problem:
                    return f"at {_path((where, k))}: {problem}"
    return None


def _path(where) -> str:
    """A (parent, key) chain -> its JSONPath, e.g. $.a[3].b (shortened past 120 characters)."""
    keys = []
    while where is not None:
        where, k = where
        keys.append(f"[{k}]" if isinstance(k, int) else f".{k[:40]}")
    text = "$" + "".join(reversed(keys))
    return text if len(text) <= 120 else text[:117] + "..."


def _json_object(t: str | dict, i: int) -> dict:
    """One metadata entry (JSON object text or a dict) -> a dict the store can hold, or InvalidArgument."""
    if not isinstance(t, (str, dict)):
        raise not_a_json_object(f"metadata[{i}]", t, item=i)
    try:
        if isinstance(t, dict):  # in-process callers: the same checks as for text
            try:
                t = json.dumps(t, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"metadata[{i}]: not JSON-serialisable ({exc})", item=i) from None
        try:
            obj = json.loads(t, parse_constant=_reject_constant)
        except ValueError as exc:
            raise not_a_json_object(f"metadata[{i}]", t, f"not valid JSON: {exc}", item=i) from None
    except RecursionError:
        raise InvalidArgument(f"metadata[{i}]: nested deeper than {MAX_JSON_DEPTH} levels", item=i) from None
    if not isinstance(obj, dict):
        raise not_a_json_object(f"metadata[{i}]", t, f"a JSON {type(obj).__name__}", item=i)
    problem = json_problem(obj)
    if problem:
        raise InvalidArgument(f"metadata[{i}]: {problem}", item=i)
    return obj


def check_metadata(texts: Sequence[str | dict], n: int) -> list[dict]:
    """JSON object texts or dicts (one per item, or none at all) -> dicts the store can hold; InvalidArgument
    naming the bad one (and `err.item` its position)."""
    if not texts:
        return [{} for _ in range(n)]
    if len(texts) != n:
        raise InvalidArgument(f"metadata: got {len(texts)} entries for {n} ids; give one JSON object per id or none")
    return [{} if t == "" else _json_object(t, i) for i, t in enumerate(texts)]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")  # NaN and Infinity: Python's json accepts them, JSON does not


KNOBS = (("nprobe", "nprobe"), ("ef_search", "efSearch"), ("k_factor", "k_factor"))  # (SearchParams field, name)


def check_search_params(params: SearchParams, knobs: frozenset[str], index: str) -> SearchParams:
    """Each knob an integer in 0..MAX_PARAM (0: the index kind's default), and none set that index kind `index`
    does not read (`knobs`: its SearchParams fields, index.ann.search_knobs), so none is silently ignored."""
    for field, key in KNOBS:
        v = getattr(params, field)
        if not isinstance(v, int) or v < 0 or v > MAX_PARAM:
            raise InvalidArgument(f"params.{key} must be an integer in 0..{MAX_PARAM}, got {v!r}")
    unused = [key for field, key in KNOBS if getattr(params, field) and field not in knobs]
    if unused:
        takes = ", ".join(key for field, key in KNOBS if field in knobs) or "no search parameters"
        raise InvalidArgument(f"params {', '.join(unused)}: index {index!r} does not use "
                              f"{'them' if len(unused) > 1 else 'it'}; it takes {takes}")
    return params


def check_k(k) -> int:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be in 1..{MAX_K}, got {k!r}")
    return k


def check_page_size(page_size: int) -> int:
    """The range-search page size; 0 takes DEFAULT_PAGE."""
    size = page_size or DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidArgument(f"page_size must be in 1..{MAX_PAGE}, got {page_size}")
    return size
