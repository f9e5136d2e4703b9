"""How the client checks request payloads, splits them into messages under the server's size limit, and joins
the answers of the parts."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from simdex.clients.plans import Call, Plan
from simdex.convert import PackedAnswer
from simdex.distances import worst
from simdex.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, SimdexError, not_a_json_object
from simdex.types import Prediction, SearchParams, SearchResult

PER_ROW_OVERHEAD = 64   # bytes of framing per item in a message, on top of vector, id and metadata
METADATA_ROW = 4096     # bytes assumed for one item's metadata when sizing an answer
SEARCH_PARAMS = ("nprobe", "efSearch", "ef_search", "k_factor")  # the keys of Client.search(params=...)


def json_texts(metadata: Sequence[Any] | None, n: int) -> list[str]:
    """Metadata dicts (or JSON texts) of `n` items -> JSON texts; [] when none was given."""
    if metadata is None:
        return []
    metadata = list(metadata)
    if len(metadata) != n:
        raise InvalidArgument(f"metadata: got {len(metadata)} entries for {n} ids")
    out = []
    for i, m in enumerate(metadata):
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, dict):
            try:
                out.append(json.dumps(m, ensure_ascii=False, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"metadata[{i}]: not JSON-serialisable ({exc})") from None
        else:
            raise not_a_json_object(f"metadata[{i}]", m, "give a dict or its JSON text", item=i)
    return out


def raw_items(images, texts) -> tuple[list | None, str]:
    """(raw items, "images" | "texts"), or (None, "") when neither was given."""
    if images is not None and texts is not None:
        raise InvalidArgument("give images or texts, not both")
    if images is not None:
        images = [images] if isinstance(images, (bytes, bytearray)) else list(images)
        for i, b in enumerate(images):
            if not isinstance(b, (bytes, bytearray)):
                raise InvalidArgument(f"images[{i}]: expected encoded bytes, got {type(b).__name__}")
        return [bytes(b) for b in images], "images"
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidArgument(f"texts[{i}]: expected str, got {type(t).__name__}")
        return texts, "texts"
    return None, ""


def filter_text(filter: dict | str | None) -> str:  # noqa: A002
    """A metadata filter as the JSON text the service parses ("" for none)."""
    if filter is None:
        return ""
    if not isinstance(filter, (dict, str)):
        raise not_a_json_object("filter", filter, "give a dict or its JSON text")
    return filter if isinstance(filter, str) else json.dumps(filter)


def spans(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Split rows of `sizes` bytes into consecutive [a, b) spans of at most `budget` bytes (at least one row)."""
    out, a, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > a and total + n > budget:
            out.append((a, i))
            a, total = i, 0
        total += n
    if a < len(sizes):
        out.append((a, len(sizes)))
    return out


def offsets(embeddings: list) -> list:
    """Pieces of one embed span, halved by `shrinking`: (row offset of each piece's first input, piece)."""
    out, off = [], 0
    for e in embeddings:
        out.append((off, e))
        off += int(e.item_index.max()) + 1 if len(e.item_index) else 0
    return out


@contextmanager
def items_from(offset: int) -> Iterator[None]:
    """Errors about one item of a part of a batch, re-counted from the batch's start: the part began at `offset`."""
    try:
        yield
    except SimdexError as exc:
        if exc.item is not None:
            exc.item += offset
        raise


def shrinking(call: Callable[[Sequence], Call], rows: Sequence) -> Plan:
    """A plan (simdex.clients.plans) making the transport call `call(rows)`; when the answer is over the message
    limit (ResourceExhausted), halve and retry. Its result: the answers of the calls, one per part, in order."""
    try:
        return [(yield call(rows))]
    except ResourceExhausted:
        if len(rows) == 1:
            raise
    half = len(rows) // 2
    first = yield from shrinking(call, rows[:half])
    with items_from(half):
        return first + (yield from shrinking(call, rows[half:]))


def search_params(params: dict | None) -> SearchParams:
    """Client.search(params={"nprobe": .., "efSearch": .., "k_factor": ..}) -> SearchParams (0: the default)."""
    p = dict(params or {})
    unknown = set(p) - set(SEARCH_PARAMS)
    if unknown:
        raise InvalidArgument(f"params: unknown keys {sorted(unknown)} (nprobe, efSearch, k_factor)")
    return SearchParams(nprobe=int(p.get("nprobe", 0)), ef_search=int(p.get("efSearch", p.get("ef_search", 0))),
                        k_factor=int(p.get("k_factor", 0)))


def padded_knn(answers, k: int, metric: str, include_metadata: bool) -> SearchResult:
    """The (hits, metas) answers of several k-NN calls -> one SearchResult, distances (nq, k) float32 padded with
    the metric's worst score where fewer than k hits exist."""
    if not include_metadata and all(isinstance(part, PackedAnswer) and part.full(k) for part, _ in answers):
        # every query has k hits: rows straight from the packed arrays, no per-hit objects
        ids = [part.ids[i:i + k] for part, _ in answers for i in range(0, len(part.ids), k)]
        D = np.concatenate([part.distances for part, _ in answers]).reshape(len(ids), k)
        return SearchResult(ids, D, None)
    hits = [h for part, _ in answers for h in part]
    D = np.full((len(hits), k), worst(metric), dtype=np.float32)
    for row, h in enumerate(hits):
        D[row, : len(h.distances)] = h.distances
    metas = [m for part, part_metas in answers for m in (part_metas or [[] for _ in part])]
    return SearchResult([list(h.ids) for h in hits], D, metas if include_metadata else None)


def joined_predictions(head: str, parts: list[Prediction]) -> Prediction:
    """The predictions of several calls -> one (they must come from one head version)."""
    if len({p.version for p in parts}) > 1:
        raise FailedPrecondition(f"head {head!r} was retrained during this call; predict again")
    first = parts[0]
    if first.vectors is not None:
        return Prediction(first.classes, None, None, np.concatenate([p.vectors for p in parts]), first.version)
    indices = None
    if all(p.label_indices is not None for p in parts):
        indices = np.concatenate([np.asarray(p.label_indices, dtype=np.int64) for p in parts])
    return Prediction(first.classes, [lab for p in parts for lab in p.labels],
                      np.concatenate([p.probabilities for p in parts]), None, first.version, indices)


def plain(v):
    """numpy scalars -> JSON values."""
    return v.item() if isinstance(v, np.generic) else v
