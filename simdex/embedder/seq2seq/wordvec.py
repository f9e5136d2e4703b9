"""Pretrained word vectors -> an embedding matrix aligned with a `Vocab` (the lecture's GloVe / word2vec init).

Formats (gzip-compressed files `*.gz` too):
- GloVe text: `word v1 ... vd` per line, no header (words may contain spaces, as in GloVe 840B);
- fastText `.vec` / word2vec text: the same lines after a first line `n d`;
- word2vec binary (`.bin`): header line `n d`, then per word `word<space>` and d little-endian float32.

The file is streamed and only the vocabulary's rows are kept, so multi-GB files need little memory.
"""
from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from simdex.embedder.seq2seq.text import Vocab
from simdex.errors import InvalidArgument, NotFound

LOG = logging.getLogger(__name__)

MISS_SCALE = 0.6  # the lecture's init for words the file lacks: normal(scale=0.6)


def load_vectors(
    path: str | Path, vocab: Vocab | Sequence[str], dim: int | None = None, seed: int = 0,
    binary: bool | None = None,
) -> tuple[np.ndarray, float]:
    """Embedding matrix for `vocab` (a Vocab, or its `tokens` list in id order) from a word-vector file.

    Returns `(emb, coverage)`: emb (len(vocab), d) float32 where row i is the vector of `vocab.tokens[i]`;
    an exact match wins, else the vector of a word equal once lowercased; misses (and SOS/EOS/UNK) are
    `normal(0, 0.6)` from `seed`; the PAD row is zeros. `coverage` is the fraction of non-special tokens found.
    `dim`, when given, must equal the file's dimension. `binary=None` picks word2vec binary for `.bin[.gz]`.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"word-vector file {str(path)!r} does not exist")
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise InvalidArgument(f"dim must be None or an int >= 1, got {dim!r}")
    if binary is None:
        binary = path.name.removesuffix(".gz").endswith(".bin")
    tokens = vocab.tokens if isinstance(vocab, Vocab) else list(vocab)
    wanted = {t: i for i, t in enumerate(tokens) if t not in Vocab.SPECIALS}
    lower = {t.lower(): i for t, i in reversed(wanted.items())}
    with _open(path) as f:
        reader = _read_binary(f, path) if binary else _read_text(f, path)
        d = next(reader)
        if dim is not None and dim != d:
            raise InvalidArgument(f"{path.name} holds {d}-d vectors, but dim={dim} was asked for")
        exact: dict[int, np.ndarray] = {}
        folded: dict[int, np.ndarray] = {}
        for word, get_vec in reader:
            i = wanted.get(word)
            if i is not None:
                exact.setdefault(i, get_vec())
            else:
                j = lower.get(word.lower())
                if j is not None and j not in folded:
                    folded[j] = get_vec()
    emb = np.random.default_rng(seed).normal(scale=MISS_SCALE, size=(len(tokens), d)).astype(np.float32)
    for i, v in {**folded, **exact}.items():
        emb[i] = v
    pad = Vocab.SPECIALS[Vocab.PAD]
    emb[[i for i, t in enumerate(tokens) if t == pad]] = 0.0
    found = len(set(exact) | set(folded))
    coverage = found / len(wanted) if wanted else 0.0
    LOG.info("%s: %d of %d vocabulary words found (coverage %.1f%%), d=%d", path.name, found, len(wanted),
             100 * coverage, d)
    return emb, coverage


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _parse_header(line: str) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def _read_text(f: IO[bytes], path: Path):
    """Generator: first yields d, then `(word, get_vector)` per line (vectors parsed only when asked for)."""
    text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="\n")
    first = text.readline()
    header = _parse_header(first)
    if header is not None:
        d = header[1]
        lines = text
    else:  # GloVe: no header, d from the first line (the word is one field there, for all GloVe files)
        d = len(first.rstrip("\r\n ").split(" ")) - 1
        lines = _chain_first(first, text)
    if d < 1:
        raise InvalidArgument(f"{path.name}: cannot read a vector dimension from the first line {first[:80]!r}")
    yield d
    bad = 0
    for line in lines:
        parts = line.rstrip("\r\n ").split(" ")
        if len(parts) < d + 1:
            bad += 1
            continue
        word = " ".join(parts[:-d])
        yield word, (lambda p=parts: np.asarray(p[-d:], dtype=np.float32))
    if bad:
        LOG.warning("%s: skipped %d malformed lines", path.name, bad)


def _chain_first(first: str, rest):
    yield first
    yield from rest


def _read_binary(f: IO[bytes], path: Path):
    """Generator for word2vec binary: first yields d, then `(word, get_vector)` per entry."""
    header = _parse_header(f.readline().decode("utf-8", errors="replace"))
    if header is None:
        raise InvalidArgument(f"{path.name}: word2vec binary must start with a 'n d' header line")
    n, d = header
    yield d
    nbytes = 4 * d
    for k in range(n):
        word = _read_word(f)
        if word is None:
            LOG.warning("%s: header says %d words, file ends after %d", path.name, n, k)
            return
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise InvalidArgument(f"{path.name}: truncated vector for word {word!r} (entry {k})")
        yield word, (lambda r=raw: np.frombuffer(r, dtype="<f4").astype(np.float32))


def _read_word(f: IO[bytes]) -> str | None:
    """Bytes up to the next space, skipping the newline the C tool writes after each vector."""
    buf = bytearray()
    while True:
        ch = f.read(1)
        if not ch:
            return buf.decode("utf-8", errors="replace") if buf else None
        if ch == b" ":
            return buf.decode("utf-8", errors="replace")
        if ch != b"\n" or buf:
            buf += ch
