"""Translator checkpoints (save / load, never unpickling objects) and the `Translator` API built on them.

A checkpoint is `torch.save` of a dict of tensors and JSON-safe values only, read back with
`torch.load(weights_only=True)`:
    format "simdex-seq2seq/1", task "spelling-bee" | "translate", config (Seq2SeqConfig), src_vocab / tgt_vocab
    (Vocab.to_dict), pipeline {direction, bpe (BPE.to_dict or None), max_src_len, max_tgt_len}, state_dict,
    metrics, train {command, seed, started, seconds, step, epoch, ...}; training checkpoints add optimizer and rng.

    from simdex.embedder.seq2seq import load_model
    t = load_model("spelling-bee")                       # or "questions-fr-en", or a path
    t.translate(["D AY0 AE1 F AH0 N AH0 S"], beam=5)     # ["diaphanous"]
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from simdex.embedder.base import Embedder, atomic_save, pick_device
from simdex.embedder.seq2seq import decoding, spelling
from simdex.embedder.seq2seq.model import Seq2Seq, Seq2SeqConfig
from simdex.embedder.seq2seq.text import Vocab, detokenize, pad_batch, tokenize
from simdex.errors import FailedPrecondition, InvalidArgument, NotFound

LOG = logging.getLogger(__name__)
FORMAT = "simdex-seq2seq/1"
MODELS_DIR = Path(__file__).parent / "models"
SHIPPED = {"spelling-bee": "spelling-bee.pt", "questions-fr-en": "questions-fr-en.pt"}
TASKS = ("spelling-bee", "translate")
MAX_TEXTS = 10_000
MAX_CHARS = 10_000




def read(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict with weights_only=True; FailedPrecondition when it is not a simdex translator."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"translator checkpoint {str(path)!r} does not exist")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise FailedPrecondition(f"{str(path)!r} is not a simdex translator checkpoint ({FORMAT})")
    return ck


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name ("spelling-bee", "questions-fr-en") or a file path -> the checkpoint path."""
    key = str(name_or_path)
    if key in SHIPPED:
        p = MODELS_DIR / SHIPPED[key]
        if not p.is_file():
            raise NotFound(f"shipped translator {key!r} is missing: expected {str(p)!r}")
        return p
    p = Path(key).expanduser()
    if not p.is_file():
        raise NotFound(f"translator {key!r} is neither a shipped model {sorted(SHIPPED)} nor an existing file")
    return p


class Translator:
    """A trained model with its vocabularies and text pipeline. Thread-compatible (inference only).

    Spelling bee: input is CMUdict phonemes separated by spaces ("D AY0 AE1 F AH0 N AH0 S"), output the word.
    Translate: input is a sentence (the lecture's tokenizer, optional BPE), output detokenized lowercase text."""

    def __init__(self, model: Seq2Seq, src_vocab: Vocab, tgt_vocab: Vocab, task: str, pipeline: dict,
                 device: torch.device, meta: dict | None = None):
        if task not in TASKS:
            raise InvalidArgument(f"task must be one of {TASKS}, got {task!r}")
        self.model = model.eval().to(device)
        self.src_vocab, self.tgt_vocab, self.task = src_vocab, tgt_vocab, task
        self.pipeline, self.device, self.meta = dict(pipeline), device, dict(meta or {})
        self._bpe = None
        if pipeline.get("bpe"):
            from simdex.embedder.seq2seq.bpe import BPE  # noqa: PLC0415

            self._bpe = BPE.from_dict(pipeline["bpe"])

    @property
    def dim(self) -> int:
        """Length of `encode` vectors."""
        return self.model.cfg.embed_dim

    # --- text <-> ids -------------------------------------------------------------------------------------
    def source_tokens(self, text: str) -> list[str]:
        if self.task == "spelling-bee":
            return spelling.source_tokens(text)
        toks = tokenize(text)
        return self._bpe.encode(toks) if self._bpe else toks

    def target_tokens(self, text: str) -> list[str]:
        if self.task == "spelling-bee":
            return spelling.target_tokens(text)
        toks = tokenize(text)
        return self._bpe.encode(toks) if self._bpe else toks

    def target_text(self, ids: list[int]) -> str:
        toks = self.tgt_vocab.decode(ids)
        if self.task == "spelling-bee":
            return spelling.join_letters(toks)
        return detokenize(self._bpe.decode(toks) if self._bpe else toks)

    def source_ids(self, texts: list[str]) -> list[list[int]]:
        cap = int(self.pipeline.get("max_src_len", 0)) or None
        out = []
        for t in texts:
            ids = self.src_vocab.encode(self.source_tokens(t))
            out.append(ids[: cap - 1] + ids[-1:] if cap and len(ids) > cap else ids)  # keep the EOS
        return out

    def batch(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = pad_batch(ids)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(lengths)

    # --- inference ----------------------------------------------------------------------------------------
    def translate_scored(self, texts: list[str], beam: int = 1, max_len: int | None = None, alpha: float = 1.0,
                         batch_size: int = 256) -> list[tuple[str, float]]:
        """texts -> [(output text, log-probability of the output ids incl. EOS)], greedy when beam == 1."""
        texts = _check_texts(texts)
        max_len = max_len or int(self.pipeline.get("max_tgt_len", 50))
        out: list[tuple[str, float]] = []
        for s in range(0, len(texts), batch_size):
            src, lengths = self.batch(self.source_ids(texts[s:s + batch_size]))
            res = decoding.beam_search(self.model, src, lengths, max_len, beam, alpha) if beam > 1 \
                else decoding.greedy(self.model, src, lengths, max_len)
            out.extend((self.target_text(ids), score) for ids, score in res)
        return out

    def translate(self, texts: list[str], beam: int = 1, max_len: int | None = None) -> list[str]:
        return [t for t, _ in self.translate_scored(texts, beam, max_len)]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
        """texts -> (n, dim) float32 sentence vectors (see `Seq2Seq.embed`), L2-normalised by default."""
        texts = _check_texts(texts)
        out = [np.zeros((0, self.dim), np.float32)]
        for s in range(0, len(texts), batch_size):
            src, lengths = self.batch(self.source_ids(texts[s:s + batch_size]))
            out.append(self.model.embed(src, lengths, normalize).cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


class EncoderEmbedder(Embedder):
    """A translator's encoder as a text embedder: sentences -> (n, dim) float32 L2-normalised vectors.

    `translator` stays reachable so a server can answer Translate with the model it already loaded."""

    modality = "text"

    def __init__(self, name: str, translator: Translator):
        super().__init__(name, translator.dim, translator.model, translator.device)
        self.translator = translator

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.translator.encode(list(texts))


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise InvalidArgument(f"texts must be a list of str, got {type(texts).__name__}")
    if len(texts) > MAX_TEXTS:
        raise InvalidArgument(f"at most {MAX_TEXTS} texts per call, got {len(texts)}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidArgument(f"texts[{i}] must be a non-empty str, got {t!r}", item=i)
        if len(t) > MAX_CHARS:
            raise InvalidArgument(f"texts[{i}] has {len(t)} characters, more than {MAX_CHARS}", item=i)
    return list(texts)


def checkpoint_dict(model: Seq2Seq, src_vocab: Vocab, tgt_vocab: Vocab, task: str, pipeline: dict,
                    metrics: dict | None = None, train: dict | None = None, half: bool = False) -> dict:
    """The JSON-safe + tensors dict that `save_model` writes. `half` stores float weights as float16."""
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu().clone())
          for k, v in model.state_dict().items()}
    return {"format": FORMAT, "task": task, "config": model.cfg.to_dict(), "src_vocab": src_vocab.to_dict(),
            "tgt_vocab": tgt_vocab.to_dict(), "pipeline": dict(pipeline), "state_dict": sd,
            "metrics": dict(metrics or {}), "train": dict(train or {})}


def save_model(t: Translator, path: str | os.PathLike, half: bool = False) -> Path:
    """Write an inference checkpoint (no optimizer state) atomically."""
    return atomic_save(checkpoint_dict(t.model, t.src_vocab, t.tgt_vocab, t.task, t.pipeline,
                                       t.meta.get("metrics"), t.meta.get("train"), half), path)


def from_checkpoint(ck: dict, device: str | torch.device | None = None) -> Translator:
    dev = pick_device(device)
    model = Seq2Seq(Seq2SeqConfig.from_dict(ck["config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
    return Translator(model, Vocab.from_dict(ck["src_vocab"]), Vocab.from_dict(ck["tgt_vocab"]), ck["task"],
                      ck.get("pipeline", {}), dev, {"metrics": ck.get("metrics", {}), "train": ck.get("train", {})})


def load_model(name_or_path: str | os.PathLike = "spelling-bee", device: str | None = None) -> Translator:
    """A shipped model by name ("spelling-bee", "questions-fr-en") or a checkpoint file -> Translator."""
    path = resolve(name_or_path)
    t = from_checkpoint(read(path), device)
    LOG.debug("translator %s loaded from %s (%s)", name_or_path, path, t.device)
    return t
