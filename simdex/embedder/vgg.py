"""VGG16 activations: fc6 (the first fully connected layer after its ReLU, the lecture's choice) and fc7.

torchvision's VGG16 classifier is [Linear, ReLU(inplace), Dropout, Linear, ReLU(inplace), Dropout, Linear]; in eval
mode dropout is the identity, so fc6 = classifier[:2] and fc7 = classifier[:5] over the flattened pooled features.
The ReLUs are in-place: a pre-ReLU tensor captured beside them is silently rectified, so we only ever take the
output *after* a ReLU, and we cut the classifier instead of hooking it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from simdex.embedder.base import ImageEmbedder
from simdex.embedder.torchvision_common import autocast_default, image_preprocess, load_state_dict

FC_CUT = {"fc6": 2, "fc7": 5}


class VGGActivation(nn.Module):
    """(B, 3, 224, 224) normalised float -> (B, 4096) activations of fc6 or fc7 after ReLU."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.features, self.avgpool = model.features, model.avgpool
        self.head = model.classifier[:FC_CUT[layer]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(self.features(x)), 1))


def build_vgg16(weights: Path | None) -> nn.Module:
    """torchvision's VGG16 with the weights file's state dict, or seeded random weights when `weights` is None."""
    torch.manual_seed(0)
    model = vgg16(weights=None)
    if weights is not None:
        load_state_dict(model, weights, "vgg16")
    return model.eval()


def _load(spec, weights: Path | None, device: torch.device, layer: str) -> ImageEmbedder:
    model = build_vgg16(weights)
    return ImageEmbedder(spec.name, spec.dim, VGGActivation(model, layer), image_preprocess(VGG16_Weights.DEFAULT),
                         device, precision=autocast_default(device, spec.bf16))


def load_fc6(spec, weights, device):
    return _load(spec, weights, device, "fc6")


def load_fc7(spec, weights, device):
    return _load(spec, weights, device, "fc7")
