"""What the torchvision-backed embedders share: loading a state dict offline, the weights' own preprocessing,
and whether to run in bf16 on this CPU (decided by measurement per embedder, EmbedderSpec.bf16, not by the CPU
flag alone)."""
from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)
# torchvision's old DenseNet checkpoints name layers "norm.1"; its own loader renames them to "norm1" the same way.
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def load_state_dict(model: nn.Module, path: Path, arch: str) -> None:
    """Load a torchvision checkpoint file (a plain state dict) into `model`; never unpickles objects."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InvalidArgument(f"weights file {str(path)!r} is not a readable torch checkpoint: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InvalidArgument(f"weights file {str(path)!r} holds no state dict")
    sd = {(_DENSENET_KEY.sub(r"\1\2", k) if arch.startswith("densenet") else k): v for k, v in sd.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise InvalidArgument(f"weights file {str(path)!r} does not fit {arch}: {str(exc)[:300]}") from exc
    LOG.info("loaded %s weights from %s", arch, path)


def image_preprocess(weights_enum):
    """The weights' own eval transform (resize 256, centre crop 224, ImageNet mean/std) on an (H, W, 3) uint8 array."""
    transform = weights_enum.transforms()

    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # decoders return read-only
        return transform(t)

    return preprocess


@functools.cache
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


AUTOCAST = ("fp32", "bf16", "fp16")


def autocast_default(device: torch.device, measured_ok: bool) -> str:
    """The numeric path of an embedder's forward, one of AUTOCAST. SIMDEX_AUTOCAST=fp32|bf16|fp16 chooses it
    explicitly on any device (on CUDA the only way off fp32: there it is a measured option, bench/gpu_paths.py);
    else bf16 where bf16_default says, else fp32. Recorded in the fingerprint (":bf16", ":fp16"), so a collection
    refuses vectors of another path."""
    env = os.environ.get("SIMDEX_AUTOCAST")
    if env:
        if env not in AUTOCAST:
            raise InvalidArgument(f"SIMDEX_AUTOCAST={env!r} is not one of {list(AUTOCAST)}")
        return env
    return "bf16" if bf16_default(device, measured_ok) else "fp32"


def bf16_default(device: torch.device, measured_ok: bool) -> bool:
    """Whether an embedder runs its forward under bf16 autocast: on a CPU with native bf16 (AMX / AVX512-BF16),
    and only for an embedder whose bf16 vectors were measured to keep recall@10 >= 0.99 against fp32
    (`measured_ok`: its EmbedderSpec.bf16, from bench/bf16.py). SIMDEX_BF16=0|1 overrides both (1: bf16 on any
    CPU, emulated where there is no native support). CUDA runs fp32. The choice is part of the embedder's
    fingerprint, so a collection keeps one numeric path."""
    env = os.environ.get("SIMDEX_BF16")
    if env in ("0", "1"):
        return env == "1" and device.type == "cpu"
    return device.type == "cpu" and measured_ok and cpu_has_bf16()
