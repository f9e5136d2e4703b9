"""DenseNet-BC: architecture, checkpoints and the `densenet-bc` embedder, training, resume and the CLI."""
from __future__ import annotations

import os
import pickle
import re

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

from simdex.embedder import densenet_bc as dn  # noqa: E402
from simdex.embedder import registry  # noqa: E402
from simdex.training import densenet as td  # noqa: E402
from simdex.embedder.base import fingerprint  # noqa: E402
from simdex.errors import InvalidArgument  # noqa: E402

TINY = dn.DenseNetBCConfig(depth=10, growth=8, compression=0.5, dropout=0.2, n_classes=10, in_size=16)


def _expected_params(depth: int, k: int, compression: float, n_classes: int, c_in: int = 3) -> int:
    """Trainable parameters of DenseNet-BC counted from the paper's description (no conv biases)."""
    n = (depth - 4) // 6
    c = 2 * k
    total = c_in * c * 9
    for b in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 4 * k * k * 9  # BN, 1x1 conv, BN, 3x3 conv
            c += k
        if b < 2:
            out = int(c * compression)
            total += 2 * c + c * out  # BN, 1x1 conv
            c = out
    return total + 2 * c + c * n_classes + n_classes  # final BN, classifier


def _images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _as_batch(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images])


def test_architecture_matches_densenet_bc_100_12():
    model = dn.build(dn.DEFAULT, seed=0)
    assert dn.DEFAULT.channels() == [24, 216, 108, 300, 150, 342]
    seen = [m.out_channels for m in model.trunk if isinstance(m, torch.nn.Conv2d)]
    seen += [t[2].out_channels for t in model.trunk if isinstance(t, torch.nn.Sequential)]
    assert seen == [24, 108, 150]
    assert sum(isinstance(m, dn._Bottleneck) for m in model.trunk) == 48
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _expected_params(100, 12, 0.5, 10)
    assert 0.7e6 < n_params < 0.85e6  # the paper: 0.8 M
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model.features(x).shape == (2, 342)
        assert model(x).shape == (2, 10)


def test_tiny_config_channels_follow_the_formula():
    model = dn.build(TINY, seed=0).eval()
    shapes = []
    for m in model.trunk:
        if isinstance(m, (dn._Bottleneck, torch.nn.Sequential)):
            m.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape[1]))
    with torch.no_grad():
        assert model.features(torch.rand(1, 3, 16, 16)).shape == (1, TINY.dim)
    assert TINY.channels() == [16, 24, 12, 20, 10, 18]
    assert shapes == [24, 12, 20, 10, 18]  # one bottleneck per block at depth 10
    assert sum(p.numel() for p in model.parameters()) == _expected_params(10, 8, 0.5, 10)


@pytest.mark.parametrize("kw", [{"depth": 11}, {"depth": 4}, {"growth": 0}, {"compression": 0.0},
                                {"dropout": 1.0}, {"n_classes": 0}])
def test_bad_config_is_refused(kw):
    args = {"depth": 10, "growth": 4, "compression": 0.5, "dropout": 0.0, "n_classes": 3, **kw}
    with pytest.raises(InvalidArgument, match=next(iter(kw))):
        dn.DenseNetBCConfig(**args)


def test_random_embedder_is_deterministic_and_is_the_pooled_features():
    images = _images(3)
    a = registry.load("densenet-bc-random", device="cpu")
    b = registry.load("densenet-bc-random", device="cpu")
    ea, eb = a.embed_images(images), b.embed_images(images)
    assert ea.shape == (3, 342) and ea.dtype == np.float32
    np.testing.assert_array_equal(ea, eb)
    assert a.fingerprint == b.fingerprint
    ref = dn.build(dn.DEFAULT, seed=0).eval()
    with torch.no_grad():
        np.testing.assert_allclose(ea, ref.features(_as_batch(images)).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(ea[0] - ea[1]).max() > 0  # different images, different embeddings


def test_preprocess_resizes_and_checks_input():
    pre = dn.make_preprocess(32)
    flat = np.full((64, 48, 3), 200, np.uint8)
    out = pre(flat)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), 200 / 255, atol=1e-5)  # a flat image stays flat when resized
    with pytest.raises(InvalidArgument, match="uint8"):
        pre(np.zeros((32, 32), np.uint8))
    with pytest.raises(InvalidArgument, match="uint8"):
        pre(np.zeros((32, 32, 3), np.float32))


def _trained_looking_model(seed: int = 3) -> dn.DenseNetBC:
    """The default architecture with non-default BN statistics, so a round trip must carry buffers too."""
    model = dn.build(dn.DEFAULT, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(1 + torch.rand(m.num_features, generator=gen))
    return model.eval()


def test_checkpoint_round_trip_through_the_registry(tmp_path):
    model = _trained_looking_model()
    norm = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    path = tmp_path / "bc.pt"
    torch.save(dn.checkpoint_dict(model, [str(i) for i in range(10)], norm, {"held_out_accuracy": 0.5}, 7), path)
    emb = registry.load("densenet-bc", weights=path, device="cpu")
    images = _images(4, seed=1)
    mean, std = torch.tensor(norm["mean"]).view(3, 1, 1), torch.tensor(norm["std"]).view(3, 1, 1)
    with torch.no_grad():
        want = model.features((_as_batch(images) - mean) / std).numpy()
    np.testing.assert_allclose(emb.embed_images(images), want, rtol=1e-5, atol=1e-6)
    assert emb.fingerprint == fingerprint(model.trunk)
    assert dn.read_checkpoint(path)["epoch"] == 7


def test_files_that_are_not_densenet_bc_checkpoints_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(pytest.raises, protocol=2))  # an arbitrary object: weights_only refuses to build it
    for path in (other, garbage, evil):
        with pytest.raises(InvalidArgument, match="not a DenseNet-BC checkpoint"):
            registry.load("densenet-bc", weights=path, device="cpu")
    tiny = tmp_path / "tiny.pt"
    torch.save(dn.checkpoint_dict(dn.build(TINY, seed=0)), tiny)
    with pytest.raises(InvalidArgument, match="342"):
        registry.load("densenet-bc", weights=tiny, device="cpu")


def test_lr_schedule_steps_at_half_and_three_quarters():
    s = td.TrainSettings(epochs=300, lr=0.1)
    assert [td.lr_at(e, s) for e in (0, 149, 150, 224, 225, 299)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.fixture(scope="module")
def digits():
    return td.load_sklearn_digits(size=16, limit=600)


def _settings(**kw) -> td.TrainSettings:
    return td.TrainSettings(**{"epochs": 1, "batch_size": 32, "seed": 0, **kw})


def test_one_epoch_lowers_the_loss_and_writes_checkpoints(digits, tmp_path):
    out = tmp_path / "m.pt"
    tr, _ = td.split(digits, 0.2, 0)
    before = td.evaluate(dn.build(TINY, seed=0), digits.x[tr], digits.y[tr])["loss"]
    r = td.train(digits, out, TINY, _settings())
    ck = dn.read_checkpoint(out)
    assert "train" not in ck and ck["epoch"] == 1 and ck["classes"] == [str(i) for i in range(10)]
    assert ck["metrics"]["held_out_accuracy"] == pytest.approx(r.held_out_accuracy)
    after = td.evaluate(dn.model_from_checkpoint(ck), digits.x[tr], digits.y[tr])["loss"]
    assert after < before
    assert "optimizer" in dn.read_checkpoint(td.ckpt_path(out))["train"]


def test_precise_bn_sets_exact_statistics_without_dropout(digits):
    model = dn.build(TINY, seed=0)
    x = digits.x[:64]
    s = _settings(batch_size=64, precise_bn=64)  # one batch: the statistics of exactly these images
    td.precise_bn(model, x, 0, s, None, torch.device("cpu"))
    with torch.no_grad():
        stem = model.trunk[0](x)  # what the first BatchNorm sees (no dropout before it)
        body = model.trunk[1].body
        inner = body[2](body[1](body[0](stem)))  # the 1x1 conv's output: dropout must be off here
    for bn, h in ((model.trunk[1].body[0], stem), (body[4], inner)):
        torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, h.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_split_is_stratified_and_seeded(digits):
    tr, te = td.split(digits, 0.2, 0)
    assert len(te) == 120 and not set(tr) & set(te)
    per_class, held = np.bincount(digits.y.numpy()), np.bincount(digits.y[te].numpy(), minlength=10)
    assert np.abs(held - 0.2 * per_class).max() <= 1
    np.testing.assert_array_equal(te, td.split(digits, 0.2, 0)[1])


def test_resume_after_interrupt_equals_the_uninterrupted_run(digits, tmp_path):
    cfg, s = TINY, _settings(epochs=2)
    full = td.train(digits, tmp_path / "full.pt", cfg, s)

    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):
        td.train(digits, part, cfg, s, on_epoch=stop)
    assert not part.exists() and dn.read_checkpoint(td.ckpt_path(part))["epoch"] == 1
    seen = []
    resumed = td.train(digits, part, cfg, s, resume=True, on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [2]
    assert [r["lr"] for r in resumed.history] == pytest.approx([0.1, 0.01])
    a, b = dn.read_checkpoint(tmp_path / "full.pt")["state_dict"], dn.read_checkpoint(part)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert resumed.held_out_accuracy == full.held_out_accuracy
    with pytest.raises(InvalidArgument, match="settings"):
        td.train(digits, part, cfg, _settings(epochs=3), resume=True)


def test_load_folder_reads_class_subfolders(tmp_path):
    from PIL import Image

    images = _images(6, size=20, seed=2)
    for i, im in enumerate(images):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    data = td.load_folder(tmp_path, size=32)
    assert data.classes == ["c0", "c1"] and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    order = [0, 2, 4, 1, 3, 5]
    torch.testing.assert_close(data.x, torch.stack([dn.to_unit(images[i], 32) for i in order]))
    with pytest.raises(InvalidArgument, match="class sub-folders"):
        td.load_folder(tmp_path / "c0")


def test_cli_trains_end_to_end(tmp_path, capsys):
    from simdex.cli.main import main

    out = tmp_path / "cli.pt"
    argv = ["train-densenet", "--sklearn-digits", "--limit", "300", "--depth", "10", "--growth", "4",
            "--epochs", "1", "--out", str(out), "--no-progress", "--seed", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"epoch=1 lr=0\.1 .*held_out_accuracy=[01]\.\d{4} seconds=\d+\.\d", lines[0])
    m = re.fullmatch(r"held_out_accuracy=([01]\.\d{4}) epochs=1 seconds=\d+\.\d", lines[-1])
    assert m and float(m.group(1)) == pytest.approx(dn.read_checkpoint(out)["metrics"]["held_out_accuracy"],
                                                    abs=1e-4)
    assert dn.read_checkpoint(out)["config"]["depth"] == 10
    assert main(argv + ["--resume"]) == 0  # already finished: rewrites the same final file
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
    with pytest.raises(SystemExit):
        main(["train-densenet", "--out", str(out)])
