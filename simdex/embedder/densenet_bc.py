"""DenseNet-BC for small images (the lecture's CIFAR-10 DenseNet), its checkpoint format and its embedder.

Architecture (Huang et al. 2017, "BC" = bottleneck + compression; `deeplearning2/densenet-keras.ipynb`):
3x3 conv with 2k filters -> 3 dense blocks of (depth - 4) / 6 bottleneck layers, each
BN-ReLU-1x1 conv(4k)-dropout-BN-ReLU-3x3 conv(k)-dropout concatenated onto its input, with transitions
BN-ReLU-1x1 conv(int(C * compression))-dropout-avgpool 2x2 between blocks -> BN-ReLU -> global average pool ->
linear classifier. Depth 100, k = 12: channels 24 -> 216 -> 108 -> 300 -> 150 -> 342, about 0.8 M parameters.

The blocks are written here rather than taken from torchvision's `_DenseBlock`/`_Transition`: those drop out only
after the 3x3 conv and never in transitions, while the paper (for data without augmentation) and the lecture drop
out after every convolution but the first. Convolutions have no bias (each one is followed by a BatchNorm).

A checkpoint is a plain dict saved with `torch.save` and read with `torch.load(weights_only=True)`:
{"format": FORMAT, "config": asdict(cfg), "state_dict", "classes", "normalisation", "metrics", "epoch"}
(a training checkpoint adds a "train" entry with optimiser state; it loads as an embedder too)."""
from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from simdex.embedder.base import ImageEmbedder
from simdex.embedder.torchvision_common import autocast_default
from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)

FORMAT = "simdex-densenet-bc/1"
BOTTLENECK_WIDTH = 4  # the 1x1 conv has 4k filters


@dataclass(frozen=True)
class DenseNetBCConfig:
    """One DenseNet-BC. `depth` counts convolutions: (depth - 4) / 6 bottleneck layers per block."""

    depth: int
    growth: int
    compression: float
    dropout: float
    n_classes: int
    in_size: int = 32
    in_channels: int = 3

    def __post_init__(self):
        checks = [
            ("depth", self.depth, isinstance(self.depth, int) and self.depth >= 10 and (self.depth - 4) % 6 == 0,
             "an int >= 10 with depth - 4 divisible by 6 (3 blocks of bottleneck pairs)"),
            ("growth", self.growth, isinstance(self.growth, int) and self.growth >= 1, "an int >= 1"),
            ("compression", self.compression, 0 < self.compression <= 1, "in (0, 1]"),
            ("dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
            ("n_classes", self.n_classes, isinstance(self.n_classes, int) and self.n_classes >= 1, "an int >= 1"),
            ("in_size", self.in_size, isinstance(self.in_size, int) and self.in_size >= 4, "an int >= 4"),
            ("in_channels", self.in_channels, isinstance(self.in_channels, int) and self.in_channels >= 1,
             "an int >= 1"),
        ]
        for name, value, ok, want in checks:
            if not ok:
                raise InvalidArgument(f"DenseNet-BC {name}={value!r}: must be {want}")
        if int(self.channels()[1] * self.compression) < 1:
            raise InvalidArgument(f"DenseNet-BC compression={self.compression!r} leaves no channels")

    @property
    def layers_per_block(self) -> int:
        return (self.depth - 4) // 6

    def channels(self) -> list[int]:
        """Channel counts after the stem, each block and each transition: [24, 216, 108, 300, 150, 342]."""
        c = [2 * self.growth]
        for b in range(3):
            c.append(c[-1] + self.layers_per_block * self.growth)
            if b < 2:
                c.append(int(c[-1] * self.compression))
        return c

    @property
    def dim(self) -> int:
        return self.channels()[-1]

    @classmethod
    def from_dict(cls, d: dict) -> "DenseNetBCConfig":
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not isinstance(d, dict) or not names.issuperset(d) or not required.issubset(d):
            raise InvalidArgument(f"DenseNet-BC config {d!r}: expected the keys {sorted(names)}")
        return cls(**d)


# The architectures by name; `densenet-bc` (the registered embedder) is DenseNet-BC-100 with k = 12.
CONFIGS: dict[str, DenseNetBCConfig] = {
    "bc-100-12": DenseNetBCConfig(depth=100, growth=12, compression=0.5, dropout=0.2, n_classes=10),
    "bc-250-24": DenseNetBCConfig(depth=250, growth=24, compression=0.5, dropout=0.2, n_classes=10),
    "bc-190-40": DenseNetBCConfig(depth=190, growth=40, compression=0.5, dropout=0.2, n_classes=10),
}
DEFAULT = CONFIGS["bc-100-12"]


def _conv(c_in: int, c_out: int, size: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, size, padding=size // 2, bias=False)


class _Bottleneck(nn.Module):
    """(B, C, H, W) -> (B, C + k, H, W): the input with k new feature maps appended."""

    def __init__(self, c_in: int, growth: int, p: float):
        super().__init__()
        width = BOTTLENECK_WIDTH * growth
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), _conv(c_in, width, 1), nn.Dropout(p),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), _conv(width, growth, 3), nn.Dropout(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def _transition(c_in: int, c_out: int, p: float) -> nn.Sequential:
    """(B, C, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), _conv(c_in, c_out, 1), nn.Dropout(p),
                         nn.AvgPool2d(2))


class DenseNetBC(nn.Module):
    """`features`: (B, in_channels, s, s) float32 -> (B, dim); `forward`: -> (B, n_classes) logits.

    `trunk` is everything up to the pooled features (the embedder's module); `classifier` the linear layer."""

    def __init__(self, cfg: DenseNetBCConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels()
        layers: list[nn.Module] = [_conv(cfg.in_channels, ch[0], 3)]
        c = ch[0]
        for b in range(3):
            for _ in range(cfg.layers_per_block):
                layers.append(_Bottleneck(c, cfg.growth, cfg.dropout))
                c += cfg.growth
            if b < 2:
                layers.append(_transition(c, ch[2 * b + 2], cfg.dropout))
                c = ch[2 * b + 2]
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, cfg.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation, as the lecture (he_uniform) and the paper; BN to identity; classifier bias zero.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def build(cfg: DenseNetBCConfig | str = DEFAULT, seed: int | None = None) -> DenseNetBC:
    """The one builder. A `seed` initialises deterministically without disturbing the global RNG."""
    if isinstance(cfg, str):
        if cfg not in CONFIGS:
            raise InvalidArgument(f"DenseNet-BC architecture {cfg!r}: known are {sorted(CONFIGS)}")
        cfg = CONFIGS[cfg]
    if seed is None:
        return DenseNetBC(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DenseNetBC(cfg)


# ---- preprocessing -------------------------------------------------------------------------------------------

def to_unit(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32 in [0, 1]: antialiased bilinear resize, then /255."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidArgument(f"DenseNet-BC embeds (H, W, 3) uint8 RGB images, got {what}")
    t = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)  # a copy: read-only input is fine
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t[0] / 255.0).clamp_(0.0, 1.0).contiguous()


def normalisation_tensors(norm: dict | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """{"mean": [3 floats], "std": [3 floats]} -> two (3, 1, 1) tensors, or None for plain /255 (the lecture)."""
    if not norm:
        return None
    try:
        mean = torch.tensor(norm["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(norm["std"], dtype=torch.float32).view(-1, 1, 1)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"DenseNet-BC normalisation {norm!r}: expected mean and std lists ({exc})") from None
    if mean.shape != std.shape or not bool((std > 0).all()):
        raise InvalidArgument(f"DenseNet-BC normalisation {norm!r}: mean and std must match, std > 0")
    return mean, std


def make_preprocess(size: int, norm: dict | None = None) -> Callable[[np.ndarray], torch.Tensor]:
    """The embedder's (and the trainer's) image -> (3, size, size) float32 map."""
    ms = normalisation_tensors(norm)

    def preprocess(image: np.ndarray) -> torch.Tensor:
        t = to_unit(image, size)
        return t if ms is None else (t - ms[0]) / ms[1]

    return preprocess


# ---- checkpoints ---------------------------------------------------------------------------------------------

def checkpoint_dict(model: DenseNetBC, classes: list[str] | None = None, normalisation: dict | None = None,
                    metrics: dict | None = None, epoch: int = 0) -> dict:
    """The weights-only-loadable checkpoint of `model` (tensors on the CPU)."""
    return {"format": FORMAT, "config": asdict(model.cfg),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "classes": list(classes or []), "normalisation": normalisation, "metrics": dict(metrics or {}),
            "epoch": int(epoch)}


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict from `path`, checked to be ours; never unpickles arbitrary objects."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds (UnpicklingError, RuntimeError, EOFError)
        raise InvalidArgument(f"{str(path)!r} is not a DenseNet-BC checkpoint ({FORMAT}): torch.load "
                              f"(weights_only) failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
    if found != FORMAT or not isinstance(ck.get("state_dict"), dict):
        raise InvalidArgument(f"{str(path)!r} is not a DenseNet-BC checkpoint: format {found!r}, "
                              f"expected {FORMAT!r} (write one with `simdex train-densenet`)")
    return ck


def model_from_checkpoint(ck: dict, source: str = "checkpoint") -> DenseNetBC:
    model = DenseNetBC(DenseNetBCConfig.from_dict(ck.get("config")))
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as exc:
        raise InvalidArgument(f"{source}: weights do not fit its config: {str(exc)[:300]}") from None
    return model


# ---- the registered embedder ---------------------------------------------------------------------------------

def load_embedder(spec, weights: Path | None, device: torch.device) -> ImageEmbedder:
    """The `densenet-bc` embedder: pooled 342-d features of a trained checkpoint, or (weights None) of the
    default architecture initialised under seed 0. Images (H, W, 3) uint8 RGB -> (n, 342) float32.

    Runs in fp32 unless SIMDEX_AUTOCAST says otherwise: bf16 autocast keeps recall@10 of only 0.985 (cosine) /
    0.988 (l2) against fp32 on bench/bf16.py's data (random weights, avx512_bf16 CPU), under the 0.99 that
    registry.BF16_RECALL_AT_10 asks."""
    if weights is None:
        model, norm = build(DEFAULT, seed=0), None
    else:
        ck = read_checkpoint(weights)
        model, norm = model_from_checkpoint(ck, str(weights)), ck.get("normalisation")
    if model.cfg.in_channels != 3:
        raise InvalidArgument(f"embedder {spec.name!r} embeds RGB images; {str(weights)!r} takes "
                              f"{model.cfg.in_channels}-channel input")
    if model.cfg.dim != spec.dim:
        raise InvalidArgument(f"embedder {spec.name!r} needs {spec.dim}-d features; {str(weights)!r} is a "
                              f"depth-{model.cfg.depth}, growth-{model.cfg.growth} DenseNet-BC with "
                              f"{model.cfg.dim}-d features")
    return ImageEmbedder(spec.name, model.cfg.dim, model.trunk, make_preprocess(model.cfg.in_size, norm), device,
                         batch_size=32, precision=autocast_default(device, False))
