"""Registers the `seq2seq-encoder` text embedder (imported by the registry on first listing).

Vectors are the translator encoder's sentence vectors (`Seq2Seq.embed`): [masked mean of the bidirectional
encoder states (2H); the top layer's final forward and backward states (2H)], L2-normalised, so 4H = 512 floats
for the shipped `questions-fr-en` model (hidden 128). By default the embedder loads that shipped checkpoint (it
lives inside the package, so it is always present); an explicit weights file (`simdex serve --weights
seq2seq-encoder=FILE`) must be a `translate` checkpoint with the same dimension.
"""
from __future__ import annotations

import logging
from pathlib import Path

from simdex.embedder.registry import EmbedderSpec, register
from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)
NAME = "seq2seq-encoder"
DIM = 512
DEFAULT_MODEL = "questions-fr-en"
DEFAULT_FILE = Path(__file__).parent / "models" / "questions-fr-en.pt"  # = checkpoint.resolve(DEFAULT_MODEL),
# spelled out here because importing checkpoint would import torch, and listing embedders must not.

# An absolute path as weights_file: weights.resolve joins it onto the hub folder, which keeps it as is.
SPEC = register(EmbedderSpec(
    NAME, "text", DIM, "simdex.embedder.seq2seq.registration:load_embedder",
    weights_file=str(DEFAULT_FILE),
    description="encoder of the seq2seq translator shipped as questions-fr-en (French questions; bidirectional "
                "GRU, hidden 128): masked mean of encoder states + final states, L2-normalised"))


def load_embedder(spec: EmbedderSpec, weights: Path | None, device):
    """The factory the registry calls: an `EncoderEmbedder` over a translate checkpoint (the shipped one by
    default). torch is imported here, not at registration, so listing embedders stays light."""
    from simdex.embedder.seq2seq.checkpoint import EncoderEmbedder, load_model  # noqa: PLC0415

    path = weights or DEFAULT_FILE
    translator = load_model(path, device=str(device))
    if translator.task != "translate":
        raise InvalidArgument(f"embedder {spec.name!r} encodes sentences; {str(path)!r} is a "
                              f"{translator.task} model")
    if translator.dim != spec.dim:
        raise InvalidArgument(f"embedder {spec.name!r} gives {spec.dim}-d vectors; {str(path)!r} gives "
                              f"{translator.dim}-d (hidden {translator.model.cfg.hidden})")
    return EncoderEmbedder(spec.name, translator)
