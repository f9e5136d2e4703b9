"""How the client checks request payloads and splits them into messages under the server's size limit."""
from __future__ import annotations

import json
from typing import Any, Sequence

from simdex.errors import InvalidArgument


def _json_texts(metadata: Sequence[Any] | None, n: int) -> list[str]:
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
            raise InvalidArgument(f"metadata[{i}]: expected a dict, got {type(m).__name__}")
    return out


def _raw(images, texts) -> tuple[list | None, str]:
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


def _spans(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Split rows of `sizes` bytes into consecutive [a, b) spans of at most `budget` bytes (at least one row)."""
    spans, a, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > a and total + n > budget:
            spans.append((a, i))
            a, total = i, 0
        total += n
    if a < len(sizes):
        spans.append((a, len(sizes)))
    return spans


def _offsets(embeddings: list) -> list:
    """Pieces of one embed span, halved by _shrinking: (row offset of each piece's first input, piece)."""
    out, off = [], 0
    for e in embeddings:
        out.append((off, e))
        off += int(e.item_index.max()) + 1 if len(e.item_index) else 0
    return out


def _filter_text(filter: dict | str | None) -> str:  # noqa: A002
    if filter is None:
        return ""
    return filter if isinstance(filter, str) else json.dumps(filter)
