"""What both lookup front ends share (the static page of `simdex lookup` and the web page of `simdex web`): a
search's hits, their grouping by study then series, and hit thumbnails decoded from the files the items were
indexed from (`path` metadata), each file decoded once and kept in a bounded cache.

Needs Pillow and pydicom (the `lookup` or `web` extra) for decoding, besides the light client."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

from simdex.distances import BIGGER_IS_BETTER
from simdex.embedder.decode import Decoded, decode_image, iter_frames, thumbnail_png
from simdex.errors import FailedPrecondition, InvalidArgument, SimdexError
from simdex.lookup.files import MAX_FILE_BYTES, UnreadableFile, read_file
from simdex.types import CollectionInfo


HIT_SIDE = 200            # longest side of each neighbour's thumbnail, pixels
STUDY, SERIES = "StudyInstanceUID", "SeriesInstanceUID"
_METRIC_NAMES = {"l2": "squared L2 distance", "ip": "inner product", "cosine": "cosine similarity"}


@dataclass
class Hit:
    """One neighbour. `distance` is the collection metric's score (a similarity for ip/cosine); `thumbnail` PNG
    bytes, or None with `problem` saying why (no path, file not found, cannot decode ...)."""
    rank: int                      # 1 = nearest
    id: str
    distance: float
    metadata: dict
    thumbnail: bytes | None = None
    problem: str = ""

    @property
    def study(self) -> str | None:
        return uid(self.metadata, STUDY)

    @property
    def series(self) -> str | None:
        return uid(self.metadata, SERIES)


@dataclass
class Series:
    uid: str | None                # None: hits of the study that carry no SeriesInstanceUID
    hits: list[Hit]


@dataclass
class Study:
    uid: str | None                # None only for a lone hit without a StudyInstanceUID (the web page's groups)
    series: list[Series]

    @property
    def hits(self) -> list[Hit]:
        return [h for s in self.series for h in s.hits]


def uid(meta: dict, key: str) -> str | None:
    """The UID `meta[key]` stripped, or None when it is missing, blank or not a string (such hits do not group)."""
    v = meta.get(key)
    return v.strip() if isinstance(v, str) and v.strip() else None


def score_meaning(metric: str) -> str:
    """'cosine similarity, higher is closer' and the like, from the metric's declared direction."""
    side = "higher" if BIGGER_IS_BETTER[metric] else "lower"
    return f"{_METRIC_NAMES.get(metric, metric)}, {side} is closer"


def search_similar(client, collection: str, query: bytes, k: int, query_name: str = "query",
                   filter: dict | None = None) -> tuple[CollectionInfo, Decoded, list[Hit]]:  # noqa: A002
    """Search `collection` (it must have an embedder: the server embeds the query) with the encoded image or DICOM
    bytes `query` -> (the collection, the query's decoded frame with its allow-listed tags, its Hits ranked from 1).

    The query is decoded here first, so a bad file fails, named by `query_name`, before any server call."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    if not isinstance(query, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"query: expected the encoded file's bytes, got {type(query).__name__}")
    query = bytes(query)
    shown = decode_image(query, query_name)[0]
    info = client.get_collection(collection)
    if not info.embedder:
        raise FailedPrecondition(f"collection {collection!r} has no embedder: a lookup sends raw images, which only "
                                 "a collection created with an embedder can embed")
    r = client.search(collection, images=[query], k=k, include_metadata=True, filter=filter)
    ids, dist, metas = r.ids[0], r.distances[0], r.metadata[0]  # ids are the real hits; the padding has none
    return info, shown, [Hit(i + 1, id_, float(dist[i]), dict(metas[i])) for i, id_ in enumerate(ids)]


def group_hits(hits: list[Hit]) -> tuple[list[Study], list[Hit]]:
    """Hits -> (studies, ungrouped). A study holds its series; studies, series and hits keep the order of their
    best (first) hit, so the nearest match's study comes first. Hits without a StudyInstanceUID are ungrouped;
    hits of a study without a SeriesInstanceUID form that study's series None."""
    studies: dict[str, dict[str | None, list[Hit]]] = {}
    ungrouped = []
    for h in sorted(hits, key=lambda h: h.rank):
        if h.study is None:
            ungrouped.append(h)
        else:
            studies.setdefault(h.study, {}).setdefault(h.series, []).append(h)
    return [Study(uid, [Series(s, hs) for s, hs in series.items()]) for uid, series in studies.items()], ungrouped


class BoundedCache:
    """A thread-safe least-recently-used map of at most `size` entries (None: unbounded, for one-shot use).
    `get(key, make)` returns the cached value or stores and returns `make()`; two threads may both make a missing
    value (the later one wins), which is harmless for pure results such as thumbnails."""

    def __init__(self, size: int | None = None):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            if self.size is not None and len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def frame_of(meta: dict) -> int | None:
    """The item's `frame` metadata (int, 0-based; the batch indexer writes it for items of one frame), else None."""
    frame = meta.get("frame")
    return frame if isinstance(frame, int) and not isinstance(frame, bool) else None


def thumbnail_of(data: bytes, what: str, frame: int | None = None, max_side: int = HIT_SIDE) -> bytes:
    """Encoded image or DICOM bytes -> PNG thumbnail of frame `frame` (None: the middle frame, the one the server
    embeds without all_frames). SimdexError naming `what` when the bytes do not decode or lack that frame."""
    shown = decode_image(data, what)[0]
    if frame is not None and shown.frame != frame:  # an item of one frame of a multi-frame file
        # frames decode one at a time: stop at the wanted one instead of decoding (and holding) them all
        shown = next((f for f in iter_frames(data, what, all_frames=True) if f.frame == frame), None)
        if shown is None:
            raise InvalidArgument(f"{what} has no frame {frame}")
    return thumbnail_png(shown.rgb, max_side)


class Thumbnails:
    """PNG thumbnails of the files named by items' `path` metadata, each file decoded once (at most `cache_size`
    kept; None keeps all, for one lookup). Only regular files of at most `max_bytes` are read
    (simdex.lookup.files): any other path is reported as unreadable, never opened."""

    def __init__(self, root: str | Path | None = None, max_side: int = HIT_SIDE, max_bytes: int = MAX_FILE_BYTES,
                 cache_size: int | None = None):
        self.root = Path(root) if root is not None else Path.cwd()
        self.max_side, self.max_bytes = max_side, max_bytes
        self._done = BoundedCache(cache_size)

    def get(self, meta: dict) -> tuple[bytes | None, str]:
        """(PNG bytes, "") or (None, why not). A `frame` key picks that frame of a multi-frame DICOM; without it
        the middle frame, the one the server embeds."""
        path = meta.get("path")
        if not isinstance(path, str) or not path:
            return None, "no 'path' in the item's metadata"
        frame = frame_of(meta)
        return self._done.get((path, frame), lambda: self._make(self.root / path, frame))

    def _make(self, p: Path, frame: int | None) -> tuple[bytes | None, str]:
        try:
            data = read_file(p, self.max_bytes)  # regular files only: never a device, a FIFO or a directory
        except UnreadableFile as e:
            return None, e.reason
        try:
            return thumbnail_of(data, str(p), frame, self.max_side), ""
        except SimdexError as e:
            return None, e.message
