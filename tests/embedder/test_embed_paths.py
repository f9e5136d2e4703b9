"""The embedders' throughput options on the CPU: channels_last gives the vectors of the default layout, fp16
autocast is an explicit option (SIMDEX_AUTOCAST) that names itself in the fingerprint, and batches are stacked
into plain memory off CUDA."""
import numpy as np
import pytest
import torch

from simdex.embedder import registry
from simdex.embedder.base import ImageEmbedder
from simdex.errors import InvalidArgument

NAMES = ["densenet-bc-random", "densenet121-random"]


def images(n=6, size=64):
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def relayout(emb, channels_last: bool, precision: str = "fp32") -> ImageEmbedder:
    """The same weights and preprocessing with another layout / numeric path."""
    return ImageEmbedder(emb.name, emb.dim, emb.module.to(memory_format=torch.contiguous_format), emb.preprocess,
                         emb.device, fp=emb.weights_fingerprint, precision=precision, channels_last=channels_last)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_gives_the_default_layouts_vectors(name, monkeypatch):
    monkeypatch.setenv("SIMDEX_AUTOCAST", "fp32")
    emb = registry.load(name, device="cpu")
    ims = images()
    plain = relayout(emb, channels_last=False).embed_images(ims)  # before the next one converts the shared module
    last = relayout(emb, channels_last=True)
    conv = next(m for m in last.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert last.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = last.embed_images(ims)
    np.testing.assert_allclose(x, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
    assert last.fingerprint == emb.fingerprint  # the layout is not a numeric path


def test_fp16_autocast_is_explicit_and_in_the_fingerprint(monkeypatch):
    monkeypatch.setenv("SIMDEX_AUTOCAST", "fp16")
    emb16 = registry.load("densenet-bc-random", device="cpu")
    monkeypatch.setenv("SIMDEX_AUTOCAST", "fp32")
    emb32 = registry.load("densenet-bc-random", device="cpu")
    assert emb16.precision == "fp16" and emb16.fingerprint == emb32.fingerprint + ":fp16"
    ims = images()
    x16, x32 = emb16.embed_images(ims), emb32.embed_images(ims)
    assert x16.dtype == np.float32
    cos = (x16 * x32).sum(1) / np.linalg.norm(x16, axis=1) / np.linalg.norm(x32, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(x16, x32)  # another numeric path, close directions
    monkeypatch.setenv("SIMDEX_AUTOCAST", "int8")
    with pytest.raises(InvalidArgument, match="SIMDEX_AUTOCAST='int8'"):
        registry.load("densenet-bc-random", device="cpu")


def test_batches_are_pinned_only_for_cuda():
    emb = registry.load("densenet-bc-random", device="cpu")
    x = emb.stack([emb.preprocess(im) for im in images(3)])
    assert x.shape == (3, 3, 32, 32) and not x.is_pinned()
    with pytest.raises(InvalidArgument, match="precision 'int4'"):
        relayout(emb, channels_last=False, precision="int4")
