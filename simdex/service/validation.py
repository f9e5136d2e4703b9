"""The service's limits and the gates its entries share: names, ids, metadata, search knobs.

Every check raises InvalidArgument with a message that names the bad value; none of them asserts.
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from simdex.errors import InvalidArgument
from simdex.types import SearchParams

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")  # used with fullmatch: the whole name
MAX_ID_LEN = 512
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


def check_ids(ids, what: str = "ids", unique: bool = True) -> list[str]:
    """A non-empty batch of ids (non-empty strings of at most MAX_ID_LEN characters), distinct when `unique`."""
    ids = list(ids)
    if not ids:
        raise InvalidArgument(f"{what}: empty batch; give at least one id")
    for i, v in enumerate(ids):
        if not isinstance(v, str) or not v:
            raise InvalidArgument(f"{what}[{i}]: ids must be non-empty strings, got {v!r}")
        if len(v) > MAX_ID_LEN:
            raise InvalidArgument(f"{what}[{i}]: id longer than {MAX_ID_LEN} characters")
    if unique and len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(v for v in ids if v in seen or seen.add(v))
        raise InvalidArgument(f"{what}: id {dup!r} appears more than once in one request")
    return ids


def check_metadata(texts: Sequence[str | dict], n: int) -> list[dict]:
    """JSON object texts or dicts (one per item, or none at all) -> dicts; InvalidArgument naming the bad one."""
    if not texts:
        return [{} for _ in range(n)]
    if len(texts) != n:
        raise InvalidArgument(f"metadata: got {len(texts)} entries for {n} ids; give one JSON object per id or none")
    out = []
    for i, t in enumerate(texts):
        if t == "":
            out.append({})
            continue
        if isinstance(t, dict):  # in-process callers: the same checks as for text
            try:
                t = json.dumps(t, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"metadata[{i}]: not JSON-serialisable ({exc})") from None
        try:
            obj = json.loads(t, parse_constant=_reject_constant)
        except ValueError as exc:
            raise InvalidArgument(f"metadata[{i}]: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise InvalidArgument(f"metadata[{i}]: must be a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")  # NaN and Infinity: Python's json accepts them, JSON does not


def check_search_params(params: SearchParams) -> SearchParams:
    """Each knob an integer in 0..MAX_PARAM (0: the index kind's default)."""
    for key, v in (("nprobe", params.nprobe), ("efSearch", params.ef_search), ("k_factor", params.k_factor)):
        if not isinstance(v, int) or v < 0 or v > MAX_PARAM:
            raise InvalidArgument(f"params.{key} must be an integer in 0..{MAX_PARAM}, got {v!r}")
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
