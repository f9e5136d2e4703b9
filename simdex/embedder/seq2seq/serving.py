"""The server side of the Translate RPC: shipped translator models, loaded once per process and shared.

Requests name a shipped model ("spelling-bee", "questions-fr-en"), never a file path: a network peer must not make
the server open files of its choosing."""
from __future__ import annotations

import threading

from simdex.errors import InvalidArgument

MAX_TEXTS = 1024
MAX_CHARS = 2000
MAX_BEAM = 32
MAX_LEN = 512
_models: dict[str, object] = {}
_lock = threading.Lock()


def model(name: str):
    from simdex.embedder.seq2seq.checkpoint import SHIPPED, load_model  # noqa: PLC0415 - torch on demand

    if name not in SHIPPED:
        raise InvalidArgument(f"translator model {name!r} is not one of the shipped models {sorted(SHIPPED)}")
    with _lock:
        if name not in _models:
            _models[name] = load_model(name)
        return _models[name]


def translate(name: str, texts: list[str], beam: int = 1, max_len: int = 0) -> list[tuple[str, float]]:
    """[(translation, log-probability of its tokens and EOS)] per text; greedy when beam is 0 or 1."""
    if not texts:
        raise InvalidArgument("translate: give at least one text")
    if len(texts) > MAX_TEXTS:
        raise InvalidArgument(f"translate: {len(texts)} texts in one request, more than {MAX_TEXTS}")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidArgument(f"texts[{i}]: empty text", item=i)
        if len(t) > MAX_CHARS:
            raise InvalidArgument(f"texts[{i}]: longer than {MAX_CHARS} characters", item=i)
    if not 0 <= beam <= MAX_BEAM:
        raise InvalidArgument(f"beam must be in 0..{MAX_BEAM}, got {beam}")
    if not 0 <= max_len <= MAX_LEN:
        raise InvalidArgument(f"max_len must be in 0..{MAX_LEN}, got {max_len}")
    m = model(name)
    with _lock:  # one decode at a time per process: torch already uses every core for one batch
        return m.translate_scored(texts, beam=max(beam, 1), max_len=max_len or None)
