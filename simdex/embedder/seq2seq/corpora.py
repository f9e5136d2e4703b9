"""Parallel English/French question corpora for the translator.

- `giga_french`: the lecture's filter over the WMT10 Giga-French corpus (`giga-fren.release2.fixed.en/.fr`,
  from `training-giga-fren.tar`): English lines starting "Wh..." up to the first "?", French lines up to the
  first "?" (52,331 pairs in the lecture). The files are GBs, so they are streamed.
- `bundled_questions`: a small hand-built question set shipped with simdex (`data/questions.tsv`, columns
  `en<TAB>fr<TAB>group`), for tests and demos without the big corpus. Rows sharing a `group` mean the same
  thing; `paraphrase_groups` returns the English sentences of groups with two or more of them.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from collections import defaultdict
from functools import lru_cache
from importlib import resources
from itertools import zip_longest
from pathlib import Path

from simdex.errors import InvalidArgument, NotFound

LOG = logging.getLogger(__name__)

DIRECTIONS = ("fr-en", "en-fr")
EN_QUESTION = re.compile(r"^(Wh[^?.!]+\?)")
FR_QUESTION = re.compile(r"^([^?.!]+\?)")
GIGA_SUFFIXES = (".en", ".fr")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _orient(en: str, fr: str, direction: str) -> tuple[str, str]:
    return (fr, en) if direction == "fr-en" else (en, fr)


def giga_french(prefix: str | Path, direction: str = "fr-en", limit: int | None = None) -> list[tuple[str, str]]:
    """Question pairs from line-aligned `prefix + ".en"` / `prefix + ".fr"`, as (source, target).

    A pair is kept when the English line matches `^(Wh[^?.!]+\\?)` and the French line `^([^?.!]+\\?)`; the
    matched groups are returned (text after the first "?" is dropped). `limit` caps the number of pairs kept.
    E.g. `giga_french("data/giga-fren.release2.fixed")` -> `[("Qu'est-ce que la lumière?", "What is light?"), ...]`.
    """
    _check_direction(direction)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidArgument(f"limit must be None or an int >= 0, got {limit!r}")
    en_path, fr_path = (Path(str(prefix) + s) for s in GIGA_SUFFIXES)
    for p in (en_path, fr_path):
        if not p.is_file():
            raise NotFound(
                f"Giga-French file {str(p)!r} does not exist; it comes from the WMT10 training-giga-fren.tar "
                f"(giga-fren.release2.fixed.en/.fr, gunzipped), and prefix must omit the .en/.fr suffix"
            )
    pairs: list[tuple[str, str]] = []
    n_lines = 0
    with open(en_path, encoding="utf-8", errors="replace") as fe, \
            open(fr_path, encoding="utf-8", errors="replace") as ff:
        for n_lines, (en, fr) in enumerate(zip_longest(fe, ff), start=1):
            if limit is not None and len(pairs) >= limit:
                break
            if en is None or fr is None:
                LOG.warning("%s and %s have different line counts; stopped at line %d", en_path.name,
                            fr_path.name, n_lines)
                break
            me = EN_QUESTION.match(en)
            if me is None:
                continue
            mf = FR_QUESTION.match(fr)
            if mf is not None:
                pairs.append(_orient(me.group(1), mf.group(1), direction))
    LOG.info("giga-french: %d question pairs from %d lines (%s)", len(pairs), n_lines, direction)
    return pairs


@lru_cache(maxsize=1)
def _bundled_rows() -> tuple[tuple[str, str, str], ...]:
    """(en, fr, group) rows of the bundled TSV, header skipped."""
    text = resources.files("simdex.embedder.seq2seq").joinpath("data/questions.tsv").read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader)
    if header != ["en", "fr", "group"]:
        raise InvalidArgument(f"bundled questions.tsv has header {header!r}, expected ['en', 'fr', 'group']")
    return tuple((r[0], r[1], r[2]) for r in reader if r)


def bundled_questions(direction: str = "fr-en") -> list[tuple[str, str]]:
    """The bundled question pairs as (source, target) in `direction`, e.g.
    ("Quelle est la population du Canada ?", "What is the population of Canada?") for "fr-en"."""
    _check_direction(direction)
    return [_orient(en, fr, direction) for en, fr, _ in _bundled_rows()]


def paraphrase_groups() -> list[list[str]]:
    """English sentences of the bundled set that mean the same, one list per group (groups of >= 2 only),
    in file order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for en, _, group in _bundled_rows():
        if en not in groups[group]:
            groups[group].append(en)
    return [g for g in groups.values() if len(g) >= 2]
