"""The web page's PACS: the instance that stands for a study when a person asks by StudyInstanceUID (QIDO-RS, then
WADO-RS), and rendered images of stored hits (WADO-RS `/rendered`). The connection, its credentials and the
mapping of PACS failures to simdex errors are the indexer's (simdex.jobs.dicomweb.Pacs), so the page and
`simdex index` reach a PACS the same way.

A study is queried by one instance: the middle instance (by InstanceNumber) of its first series (by SeriesNumber),
a slice from the middle of the first acquisition. Its Part-10 bytes go to the simdex server to be embedded, like an
upload; only its allow-listed tags ever reach the page. An unknown study is NotFound."""
from __future__ import annotations

import io
import logging

from simdex.errors import NotFound
from simdex.jobs.dicomweb import (INSTANCE_NUMBER, SERIES, SERIES_NUMBER, SOP, Pacs, PacsAuth, check_uid,
                                  dicomweb_url, tag_int, tag_text)

LOG = logging.getLogger(__name__)

_LAST = 1 << 31  # where a missing or malformed SeriesNumber / InstanceNumber sorts


class StudyPacs:
    """The PACS at `source` (dicomweb+http(s)://HOST:PORT/PATH), authenticated with `auth`."""

    def __init__(self, source: str, auth: PacsAuth = PacsAuth()):
        self.pacs = Pacs(dicomweb_url(source), auth)
        self.url = self.pacs.url

    def study_instance(self, study_uid: str) -> tuple[bytes, str]:
        """(Part-10 bytes, SOP Instance UID) of the instance that stands for study `study_uid` (module docstring)."""
        check_uid(study_uid, "study_uid")
        rows = self.pacs.call(f"QIDO-RS search of study {study_uid}", self.pacs.client.search_for_instances,
                              study_instance_uid=study_uid, fields=["SeriesNumber", "InstanceNumber"],
                              get_remaining=True)
        found = []
        for row in rows or ():
            series, sop = tag_text(row, SERIES), tag_text(row, SOP)
            if series and sop:
                found.append((tag_int(row, SERIES_NUMBER, _LAST), series, tag_int(row, INSTANCE_NUMBER, _LAST), sop))
        if not found:
            raise NotFound(f"study {study_uid} has no instance in the PACS at {self.url}")
        first_series = min(found)[:2]
        instances = sorted(f for f in found if f[:2] == first_series)
        _, series_uid, _, sop_uid = instances[len(instances) // 2]
        ds = self.pacs.call(f"WADO-RS retrieval of instance {sop_uid}", self.pacs.client.retrieve_instance,
                            study_uid, series_uid, sop_uid)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue(), sop_uid

    def rendered(self, study_uid: str, series_uid: str, sop_uid: str, frame: int | None = None) -> bytes:
        """The PACS's PNG rendering of one instance (`frame`: 0-based, of a multi-frame instance; None: the
        instance's default rendering)."""
        for uid in (study_uid, series_uid, sop_uid):
            check_uid(uid, "UID")
        if frame is None:
            return self.pacs.call(f"WADO-RS rendering of instance {sop_uid}",
                                  self.pacs.client.retrieve_instance_rendered, study_uid, series_uid, sop_uid,
                                  media_types=("image/png",))
        return self.pacs.call(f"WADO-RS rendering of frame {frame + 1} of instance {sop_uid}",
                              self.pacs.client.retrieve_instance_frames_rendered, study_uid, series_uid, sop_uid,
                              frame_numbers=[frame + 1], media_types=("image/png",))
