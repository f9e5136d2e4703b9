"""A search's hits -> the JSON of `POST /api/similar` (the web page's contract):

    {"query": {allow-listed DICOM tags of the query},
     "metric": {"name": "cosine", "score": "cosine similarity, higher is closer", "higher_is_closer": true},
     "studies": [{"study_uid", "score", "modality", "body_part",
                  "series": [{"series_uid", "hits": [{"id", "score", "thumbnail_url"}]}], "viewer_url"}]}

Scores are the collection's own (similarity for cosine/ip, distance for l2); a study's score is its best hit's, and
studies come best first. A hit without a StudyInstanceUID is a study of its own with `study_uid` null (and no viewer
link), placed by its rank. Only named facts leave an item's metadata (modality, body part, UIDs), never the rest."""
from __future__ import annotations

from typing import Callable
from urllib.parse import quote

from simdex.distances import BIGGER_IS_BETTER
from simdex.embedder.dicom import SAFE_TAGS
from simdex.lookup.grouping import Hit, Series, Study, group_hits, score_meaning


def metric_json(metric: str) -> dict:
    return {"name": metric, "score": score_meaning(metric), "higher_is_closer": BIGGER_IS_BETTER[metric]}


def query_json(metadata: dict) -> dict:
    """The query's facts: its allow-listed DICOM tags only ({} for a plain image), whatever else was passed."""
    return {k: metadata[k] for k in SAFE_TAGS if k in metadata}


def viewer_link(template: str | None, study_uid: str | None) -> str | None:
    """`template` with `{study}` replaced by the URL-encoded StudyInstanceUID; None without either."""
    if not template or study_uid is None:
        return None
    return template.replace("{study}", quote(study_uid, safe=""))


def similar_json(metric: str, query_metadata: dict, hits: list[Hit], thumbnail_url: Callable[[Hit], str],
                 viewer_url: str | None = None) -> dict:
    """The response of `POST /api/similar` (module docstring). `thumbnail_url(hit)` gives each hit's image URL."""
    studies, ungrouped = group_hits(hits)
    groups = studies + [Study(None, [Series(None, [h])]) for h in ungrouped]
    groups.sort(key=lambda st: st.series[0].hits[0].rank)  # each group's first hit is its best
    return {"query": query_json(query_metadata), "metric": metric_json(metric),
            "studies": [_study(st, thumbnail_url, viewer_url) for st in groups]}


def _study(st: Study, thumbnail_url, viewer_url) -> dict:
    hits = sorted(st.hits, key=lambda h: h.rank)
    return {"study_uid": st.uid, "score": hits[0].distance,
            "modality": _first_text(hits, "Modality"), "body_part": _first_text(hits, "BodyPartExamined"),
            "series": [{"series_uid": se.uid,
                        "hits": [{"id": h.id, "score": h.distance, "thumbnail_url": thumbnail_url(h)} for h in se.hits]}
                       for se in st.series],
            "viewer_url": viewer_link(viewer_url, st.uid)}


def _first_text(hits: list[Hit], key: str) -> str | None:
    """The first non-blank text value of `key` among `hits` (best first); numbers as text, other values ignored."""
    for h in hits:
        v = h.metadata.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None
