"""What every embedder is: a module bound to its preprocessing, its output dimension and a fingerprint.

The fingerprint is what a collection records of the embedder that filled it, and what its later vectors must match:
the weights (sha256 over the state dict) and the numeric path that turns them into vectors. fp32 is the bare weights
fingerprint ("sha256:..."); bf16 autocast names itself after it ("sha256:...:bf16"), so a collection filled on one
path refuses vectors and raw queries from the other instead of mixing them silently."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)


def fingerprint(module: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, values) in name order: same weights, same fingerprint."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:32]


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a checkpoint is meant to be shared and shipped
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """A loaded embedder. Subclasses implement `embed_images` or `embed_texts`. Thread-safe: one forward at a time.

    `weights_fingerprint` names the weights; `fingerprint` the weights and the numeric path (`precision`)."""

    modality = "image"
    precision = "fp32"

    def __init__(self, name: str, dim: int, module: nn.Module, device: torch.device, fp: str | None = None):
        self.name, self.dim, self.device = name, dim, device
        self.module = module.eval().to(device)
        self.weights_fingerprint = fp or fingerprint(module)
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """What a collection records: the weights fingerprint, with ":PRECISION" for a path other than fp32."""
        fp = self.weights_fingerprint
        return fp if self.precision == "fp32" else f"{fp}:{self.precision}"

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        raise InvalidArgument(f"embedder {self.name!r} embeds {self.modality}s, not images")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise InvalidArgument(f"embedder {self.name!r} embeds {self.modality}s, not texts")

    def embed_frames(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB arrays taken one at a time -> (n, dim) float32."""
        return self.embed_images(list(frames))


AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ImageEmbedder(Embedder):
    """Images in, (n, dim) float32 out.

    `preprocess` maps one (H, W, 3) uint8 RGB array to a (3, h, w) float32 tensor (all the same size);
    `module` maps a (B, 3, h, w) batch to (B, dim). `precision` "bf16" or "fp16" runs the forward under that
    autocast ("fp32" without; `bf16=True` is "bf16"; the factories take torchvision_common.autocast_default); the
    output is float32 either way, and the fingerprint says which path made it. `channels_last` (default: on CUDA or
    under autocast, where the convolution kernels prefer it) changes the memory layout only, not the vectors beyond
    rounding. On CUDA, batches are stacked into pinned memory and copied without blocking."""

    def __init__(self, name: str, dim: int, module: nn.Module, preprocess: Callable[[np.ndarray], torch.Tensor],
                 device: torch.device, batch_size: int = 32, bf16: bool = False, fp: str | None = None,
                 precision: str | None = None, channels_last: bool | None = None):
        super().__init__(name, dim, module, device, fp)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.autocast = precision or ("bf16" if bf16 else "fp32")
        if self.autocast != "fp32" and self.autocast not in AUTOCAST_DTYPE:
            raise InvalidArgument(f"precision {self.autocast!r} is not one of fp32, {', '.join(AUTOCAST_DTYPE)}")
        self.channels_last = (self.autocast != "fp32" or device.type == "cuda") if channels_last is None \
            else channels_last
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    @property
    def bf16(self) -> bool:
        return self.autocast == "bf16"

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, h, w) float32 tensor -> (B, dim) float32 array."""
        with self._lock:
            batch = batch.to(self.device, non_blocking=True)  # asynchronous from pinned memory (CUDA)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            dtype = AUTOCAST_DTYPE.get(self.autocast)
            with torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext():
                y = self.module(batch)
            y = y.float().cpu().numpy()
        if y.shape[1:] != (self.dim,):
            raise RuntimeError(f"embedder {self.name}: module gave shape {y.shape}, expected (B, {self.dim})")
        return np.ascontiguousarray(y, dtype=np.float32)

    @property
    def precision(self) -> str:  # type: ignore[override]
        """The numeric path of the forward: "bf16" or "fp16" (autocast), or "fp32"."""
        return self.autocast

    def stack(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """(B, 3, h, w) of B preprocessed images, in pinned memory when the model runs on CUDA (async copies)."""
        out = torch.empty((len(batch), *batch[0].shape), dtype=batch[0].dtype,
                          pin_memory=self.device.type == "cuda")
        return torch.stack(batch, out=out)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Sequence of (H, W, 3) uint8 RGB arrays -> (n, dim) float32."""
        return self.embed_frames(iter(images))

    def embed_frames(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB arrays taken one at a time -> (n, dim) float32. Each is preprocessed when it comes
        and dropped; the model runs every `batch_size` frames, so one batch of model inputs is all this holds."""
        out, batch = [np.zeros((0, self.dim), np.float32)], []
        for im in frames:
            batch.append(self.preprocess(im))
            del im  # freed before the next frame is decoded, not after
            if len(batch) == self.batch_size:
                out.append(self.forward(self.stack(batch)))
                batch = []
        if batch:
            out.append(self.forward(self.stack(batch)))
        return np.concatenate(out)
