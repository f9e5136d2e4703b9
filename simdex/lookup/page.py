"""Medical-image lookup: one query image or DICOM instance -> its nearest stored neighbours, grouped by study then
series, as a result object, as JSON, and as a self-contained HTML page with thumbnails.

The server embeds the query (Search with raw images) and stores no pixels, so neighbour thumbnails are decoded from
the files the items were indexed from: each item's `path` metadata, relative to a root folder (or absolute). The
search, the grouping and the thumbnails are simdex.lookup.grouping's, shared with the web page (simdex.web).

Privacy: the only facts taken from the query's header are the allow-listed tags that `decode_image` returns
(simdex.embedder.dicom.SAFE_TAGS); the header itself is never read here. Every text that reaches the page (ids,
metadata, paths, messages) goes through html.escape, and the page loads nothing from outside: images are inline
data: URLs, the style is inline, and a Content-Security-Policy forbids scripts and any other source.

Needs Pillow and pydicom (the `server` extra) for decoding, besides the light client."""
from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

from simdex.distances import BIGGER_IS_BETTER
from simdex.embedder.decode import thumbnail_png
from simdex.lookup.grouping import (SERIES, STUDY, Hit, Study, Thumbnails, group_hits, score_meaning,
                                    search_similar, uid)

LOG = logging.getLogger(__name__)

QUERY_SIDE = 320          # longest side of the query's thumbnail, pixels
# (metadata key, label) shown on each card; everything else stays in the JSON.
CARD_FIELDS = (("Modality", "modality"), ("BodyPartExamined", "body part"), ("SeriesNumber", "series no."),
               ("InstanceNumber", "instance no."))
QUERY_FIELDS = (("Modality", "modality"), ("BodyPartExamined", "body part"), ("Manufacturer", "manufacturer"),
                (STUDY, "study"), (SERIES, "series"), ("SeriesNumber", "series no."),
                ("InstanceNumber", "instance no."), ("NumberOfFrames", "frames"))


@dataclass
class LookupResult:
    collection: str
    embedder: str
    metric: str
    k: int
    query_name: str
    query_metadata: dict           # allow-listed DICOM tags of the query ({} for plain images)
    query_thumbnail: bytes         # PNG
    hits: list[Hit]
    studies: list[Study] = field(default_factory=list)
    ungrouped: list[Hit] = field(default_factory=list)

    @property
    def missing(self) -> list[Hit]:
        return [h for h in self.hits if h.thumbnail is None]

    def to_json(self) -> dict:
        """A JSON-ready dict: query, score meaning, hits (id, distance, metadata, group), groups, missing files."""
        return {
            "collection": self.collection, "embedder": self.embedder, "metric": self.metric, "k": self.k,
            "score": score_meaning(self.metric), "higher_is_closer": BIGGER_IS_BETTER[self.metric],
            "query": {"name": self.query_name, "metadata": self.query_metadata},
            "hits": [{"rank": h.rank, "id": h.id, "distance": h.distance, "metadata": h.metadata,
                      "group": {"study": h.study, "series": h.series}, "thumbnail": h.thumbnail is not None}
                     for h in self.hits],
            "groups": [{"study": st.uid, "series": se.uid, "ids": [h.id for h in se.hits]}
                       for st in self.studies for se in st.series]
                      + ([{"study": None, "series": None, "ids": [h.id for h in self.ungrouped]}]
                         if self.ungrouped else []),
            "missing": [{"id": h.id, "path": h.metadata.get("path"), "reason": h.problem} for h in self.missing],
        }


# ---- the lookup ---------------------------------------------------------------------------------------------------
def lookup(client, collection: str, query: bytes, k: int = 8, *, root: str | Path | None = None,
           query_name: str = "query", filter: dict | None = None) -> LookupResult:  # noqa: A002
    """Search `collection` (it must have an embedder) with the encoded image or DICOM bytes `query`.

    Neighbour thumbnails come from each hit's `path` metadata, joined to `root` (default: the current directory;
    absolute paths are taken as they are). A hit whose file is absent or unreadable keeps `thumbnail=None` and a
    `problem`; nothing fails for it."""
    info, shown, hits = search_similar(client, collection, query, k, query_name, filter)
    thumbs = Thumbnails(root)
    for h in hits:
        h.thumbnail, h.problem = thumbs.get(h.metadata)
    studies, ungrouped = group_hits(hits)
    LOG.info("lookup %s in %r: %d hits, %d studies, %d without thumbnail", query_name, collection, len(hits),
             len(studies), sum(h.thumbnail is None for h in hits))
    return LookupResult(collection, info.embedder, info.metric, k, query_name, dict(shown.metadata),
                        thumbnail_png(shown.rgb, QUERY_SIDE), hits, studies, ungrouped)


# ---- HTML ---------------------------------------------------------------------------------------------------------
_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1d2733;background:#eef1f5}
main{max-width:1240px;margin:0 auto;padding:20px}
header.query{display:flex;gap:24px;align-items:flex-start;background:#fff;border-radius:10px;padding:18px;
 box-shadow:0 1px 3px rgba(0,0,0,.12)}
.qimg{flex:0 0 320px;height:320px;background:#000;border-radius:6px;display:flex;align-items:center;
 justify-content:center;overflow:hidden}
.qimg img,.thumb img{width:100%;height:100%;object-fit:contain;display:block}
h1{font-size:20px;margin:0 0 10px}
table.facts{border-collapse:collapse}
table.facts th{text-align:left;font-weight:600;color:#5a6878;padding:2px 14px 2px 0;vertical-align:top;
 white-space:nowrap}
table.facts td{padding:2px 0;word-break:break-all}
code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.note{margin:14px 0 0;padding:8px 12px;border-radius:6px;background:#fff4d6;color:#6b4e00}
.groups{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start;margin-top:22px}
section.group{flex:1 1 auto;min-width:260px;max-width:100%;background:#fff;border-radius:10px;padding:14px 18px 18px;
 box-shadow:0 1px 3px rgba(0,0,0,.12)}
section.group h2{font-size:16px;margin:0 0 4px}
.same{display:inline-block;margin-left:8px;padding:1px 8px;border-radius:10px;background:#d9f2e3;color:#17663a;
 font-size:12px;font-weight:600}
.series{margin-top:12px;border-top:1px solid #e3e8ee;padding-top:10px}
.series h3{font-size:13px;margin:0 0 10px;color:#3b4a5a;font-weight:600}
.count{color:#6b7a8a;font-weight:400;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,210px);gap:14px}
figure.hit{margin:0;border:1px solid #dde3ea;border-radius:8px;overflow:hidden;background:#fafbfc}
.thumb{height:200px;background:#000;display:flex;align-items:center;justify-content:center}
.missing{height:200px;display:flex;flex-direction:column;align-items:center;justify-content:center;
 padding:12px;text-align:center;background:repeating-linear-gradient(45deg,#f6e1e1,#f6e1e1 10px,#fbeeee 10px,
 #fbeeee 20px);color:#8a1f1f}
.missing b{font-size:13px;margin-bottom:6px}
.missing small{font-size:11px;word-break:break-all}
figcaption{padding:8px 10px}
.top{display:flex;justify-content:space-between;align-items:baseline}
.rank{font-weight:700;font-size:15px}
.score{font:600 13px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#0b5cad}
.id{margin:2px 0 6px;font-size:12px;word-break:break-all}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:0;font-size:12px}
dt{color:#6b7a8a}
dd{margin:0;word-break:break-all}
footer{margin:20px 0 8px;color:#6b7a8a;font-size:12px}
"""
# Nothing may load from elsewhere and nothing may run: images are data: URLs, the style is inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _score(d: float) -> str:
    return f"{d:.4f}" if abs(d) < 1000 else f"{d:.4g}"


def _picture(png: bytes | None, alt: str, problem: str, css: str) -> str:
    if png is None:
        return (f'<div class="missing" role="img" aria-label="{_e(alt)}"><b>no image</b>'
                f"<small>{_e(problem)}</small></div>")
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<div class="{css}"><img src="{src}" alt="{_e(alt)}"></div>'


def _card(h: Hit, label: str) -> str:
    rows = "".join(f"<dt>{_e(name)}</dt><dd>{_e(h.metadata[key])}</dd>"
                   for key, name in CARD_FIELDS if h.metadata.get(key) not in (None, ""))
    return (f'<figure class="hit">{_picture(h.thumbnail, f"neighbour {h.rank}: {h.id}", h.problem, "thumb")}'
            f'<figcaption><div class="top"><span class="rank">#{h.rank}</span>'
            f'<span class="score" title="{_e(label)}">{_e(_score(h.distance))}</span></div>'
            f'<div class="id">{_e(h.id)}</div><dl>{rows}</dl></figcaption></figure>')


def _grid(hits: list[Hit], label: str) -> str:
    return '<div class="grid">' + "".join(_card(h, label) for h in hits) + "</div>"


def _count(hits: list[Hit]) -> str:
    n = len(hits)
    return f'<span class="count">{n} hit{"s" if n != 1 else ""}, best #{min(h.rank for h in hits)}</span>'


def _study(st: Study, query_study: str | None, label: str) -> str:
    same = '<span class="same">same study as the query</span>' if st.uid == query_study else ""
    parts = [f'<section class="group"><h2>Study <code>{_e(st.uid)}</code> {_count(st.hits)}{same}</h2>']
    for se in st.series:
        name = f"Series <code>{_e(se.uid)}</code>" if se.uid else "No series UID"
        parts.append(f'<div class="series"><h3>{name} {_count(se.hits)}</h3>{_grid(se.hits, label)}</div>')
    return "".join(parts) + "</section>"


def _facts(res: LookupResult) -> str:
    q = res.query_metadata
    rows = [("query", res.query_name)]
    rows += [(name, q[key]) for key, name in QUERY_FIELDS if q.get(key) not in (None, "")]
    if q.get("Rows") and q.get("Columns"):
        rows.append(("size", f"{q['Columns']} x {q['Rows']}"))
    rows += [("collection", res.collection), ("embedder", res.embedder), ("score", score_meaning(res.metric)),
             ("neighbours", f"{len(res.hits)} of k = {res.k}")]
    return '<table class="facts">' + "".join(
        f"<tr><th>{_e(a)}</th><td>{_e(b)}</td></tr>" for a, b in rows) + "</table>"


def render_html(res: LookupResult) -> str:
    """The whole page as one string: header (query thumbnail and facts), then one section per study with a grid
    per series, then the ungrouped hits. Self-contained: no scripts, no external resources."""
    label = score_meaning(res.metric)
    body = [f'<header class="query">{_picture(res.query_thumbnail, "query image", "", "qimg")}<div>'
            f"<h1>Nearest neighbours of {_e(res.query_name)}</h1>{_facts(res)}"]
    if res.missing:
        body.append(f'<p class="note">{len(res.missing)} of {len(res.hits)} neighbour image(s) could not be shown: '
                    "their files were not found or not readable (see the marked cards; --root sets the folder "
                    "that item paths are relative to).</p>")
    body.append("</div></header>")
    groups = [_study(st, uid(res.query_metadata, STUDY), label) for st in res.studies]
    if res.ungrouped:
        groups.append(f'<section class="group"><h2>Ungrouped {_count(res.ungrouped)}<span class="count"> &middot; '
                      f"no StudyInstanceUID</span></h2>{_grid(res.ungrouped, label)}</section>")
    if not res.hits:
        groups.append('<section class="group"><h2>No neighbours</h2>The collection returned no hits.</section>')
    body.append('<div class="groups">' + "".join(groups) + "</div>")
    body.append(f"<footer>simdex lookup &middot; scores are {_e(label)}</footer>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>simdex lookup: {_e(res.query_name)}</title><style>{_CSS}</style></head>"
            f'<body><main>{"".join(body)}</main></body></html>\n')
