"""Text pipeline of the translator: the lecture's rule tokenizer, a vocabulary with special tokens, and padding.

Pure Python + numpy (no torch) so that data preparation and tests stay light.

    toks = tokenize("Qu'est-ce que la lumière?")     # ["qu'", "est", "ce", "que", "la", "lumière", "?"]
    vocab = Vocab.build([toks, ...], min_freq=1)
    ids = vocab.encode(toks)                          # [..., Vocab.EOS]
    x, lengths = pad_batch([ids, ...])                # (B, T) int64, (B,) int64
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)

# The lecture's `simple_toks`, rule by rule and in its order.
_POSSESSIVE = re.compile(r"(\w)(['’]s)\b")  # "rachel's" -> "rachel 's" (the curly apostrophe too)
_ELISION = re.compile(r"(\w['’])(?=\w)")  # "qu'est" -> "qu' est", "d'où" -> "d' où"
# Straight/curly double quotes and guillemets are added to the lecture's set: they occur in French text.
_PUNCT = re.compile(r'(["“”«»().,;:/_?!—])')
_SPACES = re.compile(r"\s+")


def tokenize(s: str) -> list[str]:
    """Split one sentence into lowercase tokens with the lecture's rules, applied in this order:

    1. `(\\w)'s\\b` -> `\\1 's` (possessive / "is" contraction becomes its own token);
    2. split after an apostrophe between word characters (`qu'est` -> `qu' est`);
    3. spaces around `"().,;:/_?!—` (and curly quotes, guillemets);
    4. `-` -> space;  5. collapse whitespace;  6. lowercase and split.

    "Rachel's baby is cuter than other's." -> `rachel 's baby is cuter than other 's .`
    """
    if not isinstance(s, str):
        raise InvalidArgument(f"tokenize expects a str, got {type(s).__name__}")
    s = _POSSESSIVE.sub(r"\1 \2", s)
    s = _ELISION.sub(r"\1 ", s)
    s = _PUNCT.sub(r" \1 ", s)
    s = s.replace("-", " ")
    s = _SPACES.sub(" ", s)
    return s.lower().split()


# Tokens glued to the previous one / tokens the next one is glued to, in `detokenize`.
_NO_SPACE_BEFORE = frozenset(".,;:?!)%…")
_NO_SPACE_AFTER = frozenset("(")


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens into readable text: best effort and LOSSY (case, hyphens and original spacing are gone).

    No space before `. , ; : ? ! )` or before a token that starts with an apostrophe (`'s`); no space after `(`
    or after an elided word ending in an apostrophe (`qu'`, `d'`). Everything else is joined with one space.
    """
    out: list[str] = []
    glue_next = False
    for tok in tokens:
        attach = glue_next or tok in _NO_SPACE_BEFORE or (tok[:1] in "'’" and len(tok) > 1)
        if out and attach:
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = tok in _NO_SPACE_AFTER or (len(tok) > 1 and tok[-1] in "'’")
    return " ".join(out)


class Vocab:
    """Token <-> id map. Ids 0..3 are the special tokens; the given tokens follow in order.

    `tokens[i]` is the token with id `i` (specials included). Special names inside the given list are ignored
    (so `Vocab(v.tokens) == v`); any other duplicate is an error.
    """

    PAD, SOS, EOS, UNK = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")

    def __init__(self, tokens: Iterable[str]):
        words = [t for t in tokens if t not in self.SPECIALS]
        for t in words:
            if not isinstance(t, str) or not t:
                raise InvalidArgument(f"vocabulary tokens must be non-empty str, got {t!r}")
        self._itos: list[str] = list(self.SPECIALS) + words
        self._stoi: dict[str, int] = {t: i for i, t in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            dup = next(t for t, n in Counter(words).items() if n > 1)
            raise InvalidArgument(f"duplicate vocabulary token {dup!r}")

    @classmethod
    def build(
        cls, sequences: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocab:
        """Vocabulary of every token seen at least `min_freq` times, by frequency desc then alphabetically.

        `max_size` caps the number of non-special tokens (the most frequent are kept); None means no cap.
        """
        if not isinstance(min_freq, int) or min_freq < 1:
            raise InvalidArgument(f"min_freq must be an int >= 1, got {min_freq!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
            raise InvalidArgument(f"max_size must be None or an int >= 0, got {max_size!r}")
        counts: Counter[str] = Counter()
        for seq in sequences:
            counts.update(seq)
        for special in cls.SPECIALS:
            counts.pop(special, None)
        ranked = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max_size]
        LOG.debug("vocab: %d distinct tokens, %d kept (min_freq=%d)", len(counts), len(ranked), min_freq)
        return cls(ranked)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, tok: object) -> bool:
        return tok in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order, specials first (a copy)."""
        return list(self._itos)

    def index(self, tok: str) -> int:
        """Id of `tok`, or `Vocab.UNK` when absent."""
        return self._stoi.get(tok, self.UNK)

    def encode(self, tokens: Iterable[str], add_sos: bool = False, add_eos: bool = True) -> list[int]:
        """Token list -> id list, unknown tokens as UNK, optionally framed by SOS / EOS."""
        ids = [self._stoi.get(t, self.UNK) for t in tokens]
        if add_sos:
            ids.insert(0, self.SOS)
        if add_eos:
            ids.append(self.EOS)
        return ids

    def decode(self, ids: Iterable[int], strip: bool = True) -> list[str]:
        """Id list -> tokens. With `strip`, stop at the first EOS and drop PAD and SOS (UNK stays `<unk>`)."""
        out: list[str] = []
        n = len(self._itos)
        for raw in ids:
            i = int(raw)
            if not 0 <= i < n:
                raise InvalidArgument(f"token id {i} out of range for a vocabulary of {n}")
            if strip:
                if i == self.EOS:
                    break
                if i in (self.PAD, self.SOS):
                    continue
            out.append(self._itos[i])
        return out

    def to_dict(self) -> dict:
        """JSON-safe state (plain lists/str/int) so checkpoints load with `torch.load(weights_only=True)`."""
        return {"version": 1, "specials": list(self.SPECIALS), "tokens": self._itos[len(self.SPECIALS):]}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or "tokens" not in d:
            raise InvalidArgument("vocabulary state must be a dict with a 'tokens' list")
        if list(d.get("specials", cls.SPECIALS)) != list(cls.SPECIALS):
            raise InvalidArgument(f"vocabulary specials {d.get('specials')!r} differ from {list(cls.SPECIALS)}")
        return cls(d["tokens"])


def pad_batch(
    seqs: Sequence[Sequence[int]], pad: int = 0, max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences into one matrix.

    Returns `(x, lengths)`: x (B, T) int64 with T the longest length (capped at `max_len`, truncating at the end
    like the lecture's `pad_sequences(truncating='post')`), and lengths (B,) int64 after truncation.
    """
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise InvalidArgument(f"max_len must be None or an int >= 1, got {max_len!r}")
    lengths = np.array([len(s) if max_len is None else min(len(s), max_len) for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    x = np.full((len(seqs), width), pad, dtype=np.int64)
    for row, (seq, n) in enumerate(zip(seqs, lengths)):
        x[row, :n] = np.asarray(seq[:n], dtype=np.int64)
    return x, lengths
