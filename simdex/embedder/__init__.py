"""Embedders: named models that turn raw inputs (images, DICOM, sentences) into activation vectors.

    from simdex.embedder import load, specs
    emb = load("vgg16-fc6")                  # weights from the torch hub cache, or load(name, weights=PATH)
    x = emb.embed_images([rgb_uint8, ...])   # (n, 4096) float32
"""
from simdex.embedder.registry import EmbedderSpec, load, spec, specs

__all__ = ["EmbedderSpec", "load", "spec", "specs"]
