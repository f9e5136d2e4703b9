"""A hit's thumbnail for the web page: the PACS's rendering (WADO-RS `/rendered`) when a PACS is configured and the
item carries its three UIDs, else (or when the PACS fails) the file its `path` metadata names, decoded as
`simdex lookup` does (simdex.lookup.grouping.Thumbnails). Either way the bytes are decoded and re-encoded here as a
PNG of bounded size, so the browser only ever receives an image this process made. Both caches are bounded."""
from __future__ import annotations

import logging
from pathlib import Path

from simdex.errors import SimdexError
from simdex.lookup.grouping import HIT_SIDE, SERIES, STUDY, BoundedCache, Thumbnails, frame_of, thumbnail_of, uid
from simdex.web.pacs import StudyPacs

LOG = logging.getLogger(__name__)

CACHE_SIZE = 2048  # thumbnails kept per source (about 30-60 KB each at 200 px)
SOP = "SOPInstanceUID"


class HitThumbnails:
    """`get(metadata) -> (PNG bytes, "")` or `(None, why not)`, from the PACS or the item's file (module docstring)."""

    def __init__(self, root: str | Path | None = None, pacs: StudyPacs | None = None, cache_size: int = CACHE_SIZE):
        self.files = Thumbnails(root, cache_size=cache_size)
        self.pacs = pacs
        self._rendered = BoundedCache(cache_size)

    def get(self, meta: dict) -> tuple[bytes | None, str]:
        uids = (uid(meta, STUDY), uid(meta, SERIES), uid(meta, SOP))
        problem = ""
        if self.pacs is not None and all(uids):
            frame = frame_of(meta)
            try:  # a failure is not cached: the next request asks the PACS again
                return self._rendered.get((*uids, frame), lambda: self._from_pacs(*uids, frame)), ""
            except SimdexError as e:
                problem = e.message
                LOG.info("thumbnail of %s from the PACS: %s", uids[2], problem)
        png, why = self.files.get(meta)
        if png is None and problem:
            return None, f"{problem}; {why}"
        return png, why

    def _from_pacs(self, study: str, series: str, sop: str, frame: int | None) -> bytes:
        rendered = self.pacs.rendered(study, series, sop, frame)
        return thumbnail_of(rendered, f"the PACS's rendering of {sop}", None, HIT_SIDE)
