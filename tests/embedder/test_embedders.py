"""The embedder registry: documented dims, determinism, two extraction routes agreeing, offline weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simdex.embedder import registry
from simdex.embedder.weights import MissingWeights

RNG = np.random.default_rng(0)
IMAGES = [(RNG.random((96 + 16 * i, 128, 3)) * 255).astype(np.uint8) for i in range(3)]


@pytest.mark.parametrize("name", ["vgg16-fc6-random", "vgg16-fc7-random", "densenet121-random",
                                  "densenet-bc-random"])
def test_documented_dim_and_deterministic(name):
    emb = registry.load(name)
    x1 = emb.embed_images(IMAGES)
    x2 = emb.embed_images(IMAGES[::-1])[::-1]  # other batch order: the same rows
    assert x1.shape == (len(IMAGES), registry.spec(name).dim) and x1.dtype == np.float32
    np.testing.assert_allclose(x1, x2, rtol=1e-4, atol=1e-5)
    assert np.isfinite(x1).all() and np.abs(x1).sum() > 0
    assert emb.fingerprint.startswith("sha256:")


@pytest.mark.parametrize("name,node", [("vgg16-fc6-random", "classifier.1"), ("vgg16-fc7-random", "classifier.4"),
                                       ("densenet121-random", "flatten")])
def test_feature_extractor_route_agrees(name, node):
    """Our cut of the model equals torchvision's create_feature_extractor at the documented node (after the
    in-place ReLU for VGG: fc activations are never negative)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from simdex.embedder import densenet, vgg

    emb = registry.load(name)
    model = vgg.build_vgg16(None) if name.startswith("vgg") else densenet.build_densenet121(None)
    fx = create_feature_extractor(model, {node: "out"}).eval()
    batch = torch.stack([emb.preprocess(im) for im in IMAGES])
    with torch.inference_mode():
        ref = fx(batch)["out"].numpy()
    ours = emb.embed_images(IMAGES)
    if emb.bf16:
        np.testing.assert_allclose(ours, ref, rtol=0.05, atol=0.05)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    if name.startswith("vgg"):
        assert (ours >= 0).all() and (ours == 0).any()


def test_weights_file_in_torch_home_is_used_offline(tmp_path, monkeypatch):
    from torchvision.models import densenet121

    torch.manual_seed(123)
    trained = densenet121(weights=None).eval()
    ckpt = tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(trained.state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    pool = registry.EmbedderPool()
    assert pool.present("densenet121") and pool.where("densenet121") == str(ckpt)
    emb = pool.get("densenet121")
    from simdex.embedder.base import fingerprint
    from simdex.embedder.densenet import DenseNetPooled

    assert emb.fingerprint == fingerprint(DenseNetPooled(trained))
    assert emb.fingerprint != registry.load("densenet121-random").fingerprint
    batch = torch.stack([emb.preprocess(im) for im in IMAGES[:2]])
    with torch.inference_mode():
        ref = DenseNetPooled(trained)(batch).numpy()
    np.testing.assert_allclose(emb.embed_images(IMAGES[:2]), ref, rtol=0.05 if emb.bf16 else 1e-4, atol=1e-3)


def test_missing_weights_names_the_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeights) as e:
        registry.EmbedderPool().get("vgg16-fc6")
    msg = e.value.message
    assert "vgg16-397923af.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg and "--weights" in msg
    assert e.value.code == "FAILED_PRECONDITION"


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notvgg.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    from simdex.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="does not fit vgg16"):
        registry.load("vgg16-fc6", weights=bad)
    with pytest.raises(MissingWeights, match="does not exist"):
        registry.load("vgg16-fc6", weights=tmp_path / "absent.pth")


def test_unknown_embedder_names_the_known_ones():
    from simdex.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="vgg16-fc6"):
        registry.spec("resnet-9000")
