"""Byte-pair encoding of words into subword units (Sennrich et al. 2016, as in `rsennrich/subword-nmt`).

Merges are learned on the word-frequency table, so a unit never spans two words. The last unit of every word
carries the end-of-word marker `</w>`, which makes `decode(encode(tokens)) == tokens` exact, also for words never
seen in training (their unknown characters stay single-character units). The lecture's variant keeps the
`keep_top` most frequent words whole: they are one unit each and take no part in learning.

    bpe = BPE.learn(token_sequences, num_merges=8000, keep_top=2000)
    units = bpe.encode(["quelle", "est", "la", "population", "?"])   # ["quelle</w>", ..., "popul", "ation</w>", ...]
    bpe.decode(units)                                                 # the tokens again
"""
from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)

EOW = "</w>"

Pair = tuple[str, str]


def _symbols(word: str) -> list[str]:
    """The starting segmentation of a word: its characters, the last one marked as word end."""
    return list(word[:-1]) + [word[-1] + EOW]


def _merge_pair(symbols: list[str], pair: Pair) -> list[str]:
    """Merge every non-overlapping occurrence of `pair`, left to right (the order learning uses)."""
    a, b = pair
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _pairs(symbols: Sequence[str]) -> Counter[Pair]:
    return Counter(zip(symbols, symbols[1:]))


def _check_token(tok: object) -> str:
    if not isinstance(tok, str) or not tok:
        raise InvalidArgument(f"BPE tokens must be non-empty str, got {tok!r}")
    if EOW in tok:
        raise InvalidArgument(f"token {tok!r} contains the reserved end-of-word marker {EOW!r}")
    return tok


class BPE:
    """A learned list of merges plus the set of words kept whole. Build with `BPE.learn` or `from_dict`."""

    def __init__(self, merges: Sequence[Sequence[str]], keep: Iterable[str] = ()):
        self._merges: list[Pair] = []
        for m in merges:
            if len(m) != 2 or not all(isinstance(s, str) and s for s in m):
                raise InvalidArgument(f"a merge must be two non-empty str, got {m!r}")
            self._merges.append((m[0], m[1]))
        self._rank: dict[Pair, int] = {p: r for r, p in enumerate(self._merges)}
        self._keep: frozenset[str] = frozenset(_check_token(w) for w in keep)
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def learn(
        cls, token_sequences: Iterable[Sequence[str]], num_merges: int, keep_top: int = 0, min_freq: int = 2
    ) -> BPE:
        """Learn at most `num_merges` merges from tokenized text.

        Each step merges the most frequent adjacent symbol pair (ties: the smallest pair, so the result is
        deterministic); learning stops early when the best pair occurs fewer than `min_freq` times.
        The `keep_top` most frequent words (ties alphabetical) are never split and are left out of learning.
        """
        for name, value, low in (("num_merges", num_merges, 0), ("keep_top", keep_top, 0), ("min_freq", min_freq, 1)):
            if not isinstance(value, int) or value < low:
                raise InvalidArgument(f"{name} must be an int >= {low}, got {value!r}")
        counts: Counter[str] = Counter()
        for seq in token_sequences:
            counts.update(_check_token(t) for t in seq)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        keep = ranked[:keep_top]
        learned = ranked[keep_top:]
        merges = _learn_merges([_symbols(w) for w in learned], [counts[w] for w in learned], num_merges, min_freq)
        LOG.info(
            "BPE: %d word types (%d kept whole), %d merges learned (budget %d)",
            len(counts), len(keep), len(merges), num_merges,
        )
        return cls(merges, keep)

    @property
    def merges(self) -> list[Pair]:
        """The merges in the order they were learned (a copy)."""
        return list(self._merges)

    @property
    def keep(self) -> frozenset[str]:
        """Words that are always one unit."""
        return self._keep

    def segment(self, word: str) -> tuple[str, ...]:
        """Units of one word; the last one ends with `</w>`.

        Replays the merges in learned order (after merge r only merges ranked above r may apply), so a
        training word gets exactly the segmentation learning gave it.
        """
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        _check_token(word)
        if word in self._keep:
            units: tuple[str, ...] = (word + EOW,)
        else:
            symbols = _symbols(word)
            last = -1
            while len(symbols) > 1:
                ranks = [self._rank.get(p, -1) for p in zip(symbols, symbols[1:])]
                later = [r for r in ranks if r > last]
                if not later:
                    break
                last = min(later)
                symbols = _merge_pair(symbols, self._merges[last])
            units = tuple(symbols)
        if len(self._cache) < 1_000_000:  # bound the memory a stream of unseen words can take
            self._cache[word] = units
        return units

    def encode(self, tokens: Iterable[str]) -> list[str]:
        """Tokens -> subword units (each word's last unit ends with `</w>`)."""
        out: list[str] = []
        for tok in tokens:
            out.extend(self.segment(tok))
        return out

    def decode(self, units: Iterable[str]) -> list[str]:
        """Subword units -> tokens: join units up to and including each one ending with `</w>`.

        Exact inverse of `encode`. Best effort on model output: trailing units without an end marker (a
        truncated word) still form a last token.
        """
        out: list[str] = []
        buf = ""
        for u in units:
            if u.endswith(EOW):
                out.append(buf + u[: -len(EOW)])
                buf = ""
            else:
                buf += u
        if buf:
            out.append(buf)
        return out

    def to_dict(self) -> dict:
        """JSON-safe state (lists of str) for checkpoints loaded with `torch.load(weights_only=True)`."""
        return {"version": 1, "eow": EOW, "merges": [list(p) for p in self._merges], "keep": sorted(self._keep)}

    @classmethod
    def from_dict(cls, d: dict) -> BPE:
        """Inverse of `to_dict`."""
        if not isinstance(d, dict) or "merges" not in d:
            raise InvalidArgument("BPE state must be a dict with a 'merges' list")
        if d.get("eow", EOW) != EOW:
            raise InvalidArgument(f"BPE state uses end-of-word marker {d['eow']!r}, expected {EOW!r}")
        return cls(d["merges"], d.get("keep", ()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPE) and self._merges == other._merges and self._keep == other._keep

    def __repr__(self) -> str:
        return f"BPE(merges={len(self._merges)}, keep={len(self._keep)})"


def _learn_merges(words: list[list[str]], freqs: list[int], num_merges: int, min_freq: int) -> list[Pair]:
    """The merge loop: take the most frequent pair while it occurs at least `min_freq` times, merge it in every
    word that holds it, repeat until `num_merges` merges. Mutates `words`."""
    stats = _PairStats(words, freqs)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        best = stats.best()
        if best is None or best[1] < min_freq:
            break
        merges.append(best[0])
        stats.merge(best[0])
    return merges


class _PairStats:
    """Incremental pair statistics over `words` (symbol lists, weighted by `freqs`).

    `counts[pair]` is the weighted pair count, `where[pair]` the words that may contain it (stale entries are
    skipped), and a heap of `(-count, pair)` entries with lazy deletion finds the best pair without scanning
    all pairs at every step (ties: the smallest pair, as heap order on equal counts gives)."""

    def __init__(self, words: list[list[str]], freqs: list[int]):
        self.words, self.freqs = words, freqs
        self.counts: Counter[Pair] = Counter()
        self.where: defaultdict[Pair, set[int]] = defaultdict(set)
        for wi, (symbols, f) in enumerate(zip(words, freqs)):
            for p, n in _pairs(symbols).items():
                self.counts[p] += n * f
                self.where[p].add(wi)
        self.heap = [(-n, p) for p, n in self.counts.items()]
        heapq.heapify(self.heap)

    def best(self) -> tuple[Pair, int] | None:
        """The most frequent pair and its count, or None when no pair is left."""
        while self.heap:
            neg, pair = heapq.heappop(self.heap)
            if self.counts.get(pair, 0) == -neg and neg != 0:
                return pair, -neg
            # else a stale entry: the count changed since it was pushed
        return None

    def merge(self, pair: Pair) -> None:
        """Merge `pair` in every word holding it and update the counts of the pairs around it."""
        changed: set[Pair] = set()
        for wi in self.where.pop(pair, ()):
            changed |= self._merge_in_word(wi, pair)
        self.counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            n = self.counts.get(p, 0)
            if n > 0:
                heapq.heappush(self.heap, (-n, p))
            else:
                self.counts.pop(p, None)

    def _merge_in_word(self, wi: int, pair: Pair) -> set[Pair]:
        """Word `wi` with `pair` merged; returns the pairs whose counts changed (none when it lacks the pair)."""
        old = self.words[wi]
        old_pairs = _pairs(old)
        if pair not in old_pairs:
            return set()
        new = _merge_pair(old, pair)
        self.words[wi] = new
        new_pairs = _pairs(new)
        f = self.freqs[wi]
        for p, n in old_pairs.items():
            self.counts[p] -= n * f
        for p, n in new_pairs.items():
            self.counts[p] += n * f
            self.where[p].add(wi)
        return set(old_pairs) | set(new_pairs)
