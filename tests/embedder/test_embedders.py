"""The embedder registry: documented dims, determinism, two extraction routes agreeing, offline weights, and the
bf16 path agreeing with fp32.

Whether bf16 autocast runs by default depends on the CPU and on the embedder's measured recall (`bf16_default`,
registry.BF16_RECALL_AT_10); the numeric tests force each path with SIMDEX_BF16 (0: fp32, compared exactly; 1: bf16,
compared with bf16's tolerance), so both run on every CPU."""
from __future__ import annotations

import json

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
def test_feature_extractor_route_agrees(name, node, monkeypatch):
    """Our cut of the model equals torchvision's create_feature_extractor at the documented node (after the
    in-place ReLU for VGG: fc activations are never negative). fp32 forced: an exact comparison on every CPU."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from simdex.embedder import densenet, vgg

    monkeypatch.setenv("SIMDEX_BF16", "0")
    emb = registry.load(name, device="cpu")  # a fresh build (the cached default one may run in bf16)
    assert not emb.bf16
    model = vgg.build_vgg16(None) if name.startswith("vgg") else densenet.build_densenet121(None)
    fx = create_feature_extractor(model, {node: "out"}).eval()
    batch = torch.stack([emb.preprocess(im) for im in IMAGES])
    with torch.inference_mode():
        ref = fx(batch)["out"].numpy()
    ours = emb.embed_images(IMAGES)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    if name.startswith("vgg"):
        assert (ours >= 0).all() and (ours == 0).any()


def test_weights_file_in_torch_home_is_used_offline(tmp_path, monkeypatch):
    from torchvision.models import densenet121

    monkeypatch.setenv("SIMDEX_BF16", "0")  # fp32 on every CPU: the comparison below is exact

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
    assert not emb.bf16
    np.testing.assert_allclose(emb.embed_images(IMAGES[:2]), ref, rtol=1e-4, atol=1e-3)


def _twin_images() -> list[np.ndarray]:
    """Four images of coarse colour blocks, then a lightly noised twin of each: image i's nearest neighbour is
    image (i + 4) % 8 by a wide margin (cosine about 0.9999 against at most about 0.997 for the others)."""
    rng = np.random.default_rng(7)
    base = [np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))
            for _ in range(4)]
    twins = [np.clip(b.astype(np.int16) + rng.integers(-12, 13, b.shape), 0, 255).astype(np.uint8) for b in base]
    return base + twins


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nearest(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n,) index of each row's nearest other row by cosine similarity."""
    s = _unit(x) @ _unit(x).T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(axis=1)


def test_bf16_forward_agrees_with_fp32(monkeypatch):
    """bf16 autocast (the VGG embedders' default on CPUs with AMX / AVX512-BF16) forced on, against fp32: per-row
    cosine similarity >= 0.999 and the same nearest neighbours. bf16 keeps 8 bits of mantissa, so single values
    move by up to a few percent (0.012 absolute measured on DenseNet-121 features): an elementwise fp32 tolerance
    does not fit it, directions and rankings do."""
    images = _twin_images()
    monkeypatch.setenv("SIMDEX_BF16", "0")
    fp32 = registry.load("densenet121-random", device="cpu")
    monkeypatch.setenv("SIMDEX_BF16", "1")
    bf16 = registry.load("densenet121-random", device="cpu")
    assert not fp32.bf16 and bf16.bf16 and bf16.weights_fingerprint == fp32.weights_fingerprint  # same weights
    assert fp32.fingerprint == fp32.weights_fingerprint and bf16.fingerprint == fp32.fingerprint + ":bf16"
    x32, x16 = fp32.embed_images(images), bf16.embed_images(images)
    assert x16.dtype == np.float32 and x16.shape == x32.shape
    cos = (_unit(x32) * _unit(x16)).sum(axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_array_equal(_nearest(x32), (np.arange(8) + 4) % 8)  # the data's own answer
    np.testing.assert_array_equal(_nearest(x16), _nearest(x32))


def test_bf16_is_the_default_only_where_it_was_measured_to_keep_recall(monkeypatch):
    """bench/bf16.py measured recall@10 of bf16 against fp32 >= 0.99 for the VGG layers, not for DenseNet-121
    (0.989 cosine): on a bf16 CPU the first run bf16 by default, the second fp32; SIMDEX_BF16 overrides both."""
    from simdex.embedder import torchvision_common as tc

    cpu = torch.device("cpu")
    monkeypatch.delenv("SIMDEX_BF16", raising=False)
    assert min(registry.BF16_RECALL_AT_10["vgg16-fc6"]) >= 0.99 > min(registry.BF16_RECALL_AT_10["densenet121"])
    for has in (True, False):
        monkeypatch.setattr(tc, "cpu_has_bf16", lambda has=has: has)
        assert [tc.bf16_default(cpu, registry.spec(n).bf16) for n in ("vgg16-fc6", "vgg16-fc7-random",
                                                                      "densenet121", "densenet121-random")] == [
            has, has, False, False]
    monkeypatch.setenv("SIMDEX_BF16", "1")
    assert tc.bf16_default(cpu, False) and not tc.bf16_default(torch.device("cuda"), True)
    monkeypatch.setenv("SIMDEX_BF16", "0")
    assert not tc.bf16_default(cpu, True)


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


def test_list_embedders_names_weights_files_without_server_paths(server, remote, tmp_path, monkeypatch, caplog,
                                                                capsys):
    """Over the API a weights file is its name and whether the server has it; its folder (the hub cache under the
    server's home, the install folder of the shipped model) is nowhere in an answer or an error. The server's log
    and the local `simdex embedders` (no --target) show the full paths."""
    from simdex.cli.main import main
    from simdex.errors import FailedPrecondition

    home = tmp_path / "home-of-the-server-user"
    hub = home / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"")  # present: listing looks for the file, loads nothing
    monkeypatch.setenv("TORCH_HOME", str(home))
    infos = {e.name: e for e in remote.list_embedders()}
    assert (infos["vgg16-fc6"].weights_file, infos["vgg16-fc6"].weights_present) == ("vgg16-397923af.pth", True)
    assert (infos["densenet121"].weights_file, infos["densenet121"].weights_present) == (
        "densenet121-a639ec97.pth", False)
    assert (infos["seq2seq-encoder"].weights_file, infos["seq2seq-encoder"].weights_present) == (
        "questions-fr-en.pt", True)
    assert infos["vgg16-fc6-random"].weights_file == ""
    assert all("/" not in e.weights_file and "\\" not in e.weights_file for e in infos.values())

    caplog.set_level("WARNING", logger="simdex.service.embedding")
    with pytest.raises(FailedPrecondition) as e:
        remote.create_collection("x", 0, embedder="densenet121")
    assert "densenet121-a639ec97.pth" in e.value.message and "the server's weights folder" in e.value.message
    assert str(tmp_path) not in e.value.message
    assert any(str(hub) in r.getMessage() for r in caplog.records)  # the operator still sees where

    assert main(["embedders", "--json"]) == 0  # local: the operator's own view, full paths
    local = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert local["vgg16-fc6"]["weights_file"] == str(hub / "vgg16-397923af.pth")
    assert main(["embedders", "--json", "--target", server.target]) == 0
    over = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert over["vgg16-fc6"]["weights_file"] == "vgg16-397923af.pth" and str(tmp_path) not in json.dumps(over)


def test_a_collection_keeps_one_numeric_path(tmp_path, monkeypatch):
    """A collection filled on the fp32 path records the bare weights fingerprint; the same weights on the bf16 path
    are another fingerprint, so a server now running bf16 refuses its raw queries and raw upserts (naming both
    paths and how to serve the original one) instead of mixing the two arithmetics in one index."""
    import io

    from PIL import Image

    from simdex.errors import FailedPrecondition
    from simdex.service.facade import Simdex

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    images = [png(im) for im in IMAGES[:2]]
    monkeypatch.setenv("SIMDEX_BF16", "0")
    s = Simdex(tmp_path / "data", snapshot_interval=0)
    try:
        s.create_collection("c", 0, metric="cosine", embedder="densenet121-random")
        s.upsert("c", ["a", "b"], images=images)
        fp32 = s.get_collection("c").embedder_fingerprint
    finally:
        s.close()
    assert fp32.startswith("sha256:") and not fp32.endswith(":bf16")
    monkeypatch.setenv("SIMDEX_BF16", "1")
    s = Simdex(tmp_path / "data", snapshot_interval=0)
    try:
        with pytest.raises(FailedPrecondition, match="fp32 path.*bf16 path.*SIMDEX_BF16"):
            s.search("c", images=images[:1], k=1)
        with pytest.raises(FailedPrecondition, match=":bf16"):
            s.upsert("c", ["c"], images=images[:1])
        assert s.count("c") == 2 and s.get_collection("c").embedder_fingerprint == fp32
    finally:
        s.close()
