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


class ImageEmbedder(Embedder):
    """Images in, (n, dim) float32 out.

    `preprocess` maps one (H, W, 3) uint8 RGB array to a (3, h, w) float32 tensor (all the same size);
    `module` maps a (B, 3, h, w) batch to (B, dim). With `bf16` the forward runs under bf16 autocast with
    channels_last (the factories set it where torchvision_common.bf16_default says); the output is float32
    either way, and the fingerprint says which path made it."""

    def __init__(self, name: str, dim: int, module: nn.Module, preprocess: Callable[[np.ndarray], torch.Tensor],
                 device: torch.device, batch_size: int = 32, bf16: bool = False, fp: str | None = None):
        super().__init__(name, dim, module, device, fp)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.bf16 = bf16
        if bf16 or device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, h, w) float32 tensor -> (B, dim) float32 array."""
        with self._lock:
            batch = batch.to(self.device, non_blocking=True)
            if self.bf16 or self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            if self.bf16:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    y = self.module(batch)
            else:
                y = self.module(batch)
            y = y.float().cpu().numpy()
        if y.shape[1:] != (self.dim,):
            raise RuntimeError(f"embedder {self.name}: module gave shape {y.shape}, expected (B, {self.dim})")
        return np.ascontiguousarray(y, dtype=np.float32)

    @property
    def precision(self) -> str:  # type: ignore[override]
        """The numeric path of the forward: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.bf16 else "fp32"

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
                out.append(self.forward(torch.stack(batch)))
                batch = []
        if batch:
            out.append(self.forward(torch.stack(batch)))
        return np.concatenate(out)
