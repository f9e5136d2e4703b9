"""DenseNet-121 (ImageNet) features: the backbone, its final ReLU and a global average pool -> 1024-d.

This is exactly what torchvision's DenseNet.forward computes before its classifier."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from simdex.embedder.base import ImageEmbedder
from simdex.embedder.torchvision_common import autocast_default, image_preprocess, load_state_dict


class DenseNetPooled(nn.Module):
    """(B, 3, 224, 224) normalised float -> (B, 1024)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1), 1)


def build_densenet121(weights: Path | None) -> nn.Module:
    torch.manual_seed(0)
    model = densenet121(weights=None)
    if weights is not None:
        load_state_dict(model, weights, "densenet121")
    return model.eval()


def load_densenet121(spec, weights, device):
    return ImageEmbedder(spec.name, spec.dim, DenseNetPooled(build_densenet121(weights)),
                         image_preprocess(DenseNet121_Weights.DEFAULT), device, precision=autocast_default(device, spec.bf16))
