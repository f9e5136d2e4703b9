"""Train a DenseNet-BC classifier whose pooled features become the `densenet-bc` embedder.

As the lecture and the paper: SGD with Nesterov momentum 0.9, batch 64, lr 0.1 divided by 10 at 50% and 75% of
the epochs, weight decay 1e-4 (SGD's weight_decay; the lecture's Keras l2(1e-4) on the loss equals 2e-4 here),
inputs only /255, no augmentation unless asked. A seeded, stratified held-out split gives the accuracy.

Every epoch ends with an atomic training checkpoint (`<out>.ckpt`: model, optimiser, history). Each epoch's
shuffle, dropout and augmentation are seeded from (seed, epoch), so a resumed run repeats exactly what the
uninterrupted one would have done. The final `<out>` is the weights-only checkpoint `load_embedder` reads."""
from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from simdex.embedder import densenet_bc as dn
from simdex.embedder.base import atomic_save
from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUGMENTS = ("none", "crop", "crop-flip")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    lr: float = 0.1
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    holdout: float = 0.2
    augment: str = "none"     # "crop": 4-pixel padded random crops; "crop-flip": and horizontal flips
    normalise: bool = False   # per-channel mean/std of the training split, recorded in the checkpoint
    precise_bn: int = 1024    # training images for exact BN statistics after each epoch (0: momentum averages)

    def __post_init__(self):
        for name, ok, want in (("epochs", self.epochs >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
                               ("batch_size", self.batch_size >= 2, ">= 2"),
                               ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("holdout", 0 < self.holdout < 1, "in (0, 1)"),
                               ("precise_bn", self.precise_bn >= 0, ">= 0"),
                               ("augment", self.augment in AUGMENTS, f"one of {AUGMENTS}")):
            if not ok:
                raise InvalidArgument(f"training {name}={getattr(self, name)!r}: must be {want}")


@dataclass
class Dataset:
    """x: (n, 3, s, s) float32 in [0, 1]; y: (n,) int64 class indices into `classes`."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def signature(self) -> str:
        """Identifies the data a checkpoint was trained on (a resume on other data is refused)."""
        h = hashlib.sha256(repr((tuple(self.x.shape), self.classes)).encode())
        h.update(self.y.numpy().tobytes())
        h.update(self.x[:: max(1, len(self.x) // 64)].numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class TrainResult:
    held_out_accuracy: float
    epochs: int
    seconds: float
    out: Path
    history: list[dict] = field(default_factory=list)


# ---- data ----------------------------------------------------------------------------------------------------

def load_folder(root: str | Path, size: int = 32) -> Dataset:
    """Images in class sub-folders of `root` (sorted names = class order) -> Dataset at size x size."""
    from PIL import Image  # noqa: PLC0415

    root = Path(root)
    if not root.is_dir():
        raise InvalidArgument(f"training data {str(root)!r} is not a folder of class sub-folders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    xs, ys = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                with Image.open(p) as im:
                    xs.append(dn.to_unit(np.asarray(im.convert("RGB")), size))
                ys.append(label)
    if len(classes) < 2 or not xs:
        raise InvalidArgument(f"training data {str(root)!r}: need images in at least 2 class sub-folders, found "
                              f"{len(xs)} images in {len(classes)} folders ({sorted(IMAGE_SUFFIXES)})")
    return Dataset(torch.stack(xs), torch.tensor(ys, dtype=torch.int64), classes)


def load_sklearn_digits(size: int = 32, limit: int | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16) as grey RGB uint8, upsampled to size x size.

    `limit` keeps the first `limit` images (a quick subset for tests and smoke runs)."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    images = np.rint(d.images[:limit] * (255.0 / 16.0)).astype(np.uint8)
    x = torch.stack([dn.to_unit(np.repeat(im[:, :, None], 3, axis=2), size) for im in images])
    return Dataset(x, torch.as_tensor(d.target[:limit], dtype=torch.int64), [str(c) for c in range(10)])


def split(data: Dataset, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, held-out) index arrays."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    idx = np.arange(len(data.y))
    try:
        tr, te = train_test_split(idx, test_size=holdout, random_state=seed, stratify=data.y.numpy())
    except ValueError as exc:
        raise InvalidArgument(f"cannot hold out {holdout} of {len(idx)} images per class: {exc}") from None
    return np.sort(tr), np.sort(te)


def channel_stats(x: torch.Tensor) -> dict:
    """(n, 3, s, s) -> {"mean": [3], "std": [3]} for the checkpoint's normalisation."""
    return {"mean": x.mean(dim=(0, 2, 3)).tolist(), "std": x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()}


# ---- one epoch -----------------------------------------------------------------------------------------------

def lr_at(epoch: int, s: TrainSettings) -> float:
    """The paper's step schedule: lr, lr/10 from 50% of the epochs, lr/100 from 75% (epoch counts from 0)."""
    return s.lr * (0.1 ** ((epoch >= math.ceil(0.5 * s.epochs)) + (epoch >= math.ceil(0.75 * s.epochs))))


def _augment(xb: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """(B, C, s, s) -> same shape: random crops of the 4-pixel zero-padded images (and flips for crop-flip)."""
    if mode == "none":
        return xb
    b, _, s, _ = xb.shape
    padded = F.pad(xb, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, b), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    if mode == "crop-flip":
        flip = torch.rand(b, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def _train_epoch(model, opt, x, y, epoch: int, s: TrainSettings, norm, device, progress: bool) -> dict:
    from tqdm import tqdm  # noqa: PLC0415

    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
    torch.manual_seed(s.seed * 1_000_003 + epoch)  # dropout: the same masks when an epoch is rerun on resume
    order = torch.randperm(len(y), generator=gen)
    batches = [order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size)]
    batches = [b for b in batches if len(b) > 1]  # BatchNorm cannot train on a batch of one
    model.train()
    loss_sum = correct = seen = 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{s.epochs}", unit="batch", file=sys.stderr,
               disable=not progress, leave=False)
    for idx in bar:
        xb = _normalised(_augment(x[idx], s.augment, gen), norm).to(device, non_blocking=True)
        yb = y[idx].to(device, non_blocking=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def _normalised(x: torch.Tensor, norm) -> torch.Tensor:
    return x if norm is None else (x - norm[0]) / norm[1]


@torch.no_grad()
def precise_bn(model, x: torch.Tensor, epoch: int, s: TrainSettings, norm, device) -> None:
    """Replace every BatchNorm's running statistics by their plain average over batches of (at most)
    `s.precise_bn` training images, computed with this epoch's final weights and dropout off.

    Why: the momentum averages mix statistics of weights from many SGD steps and of dropped-out activations;
    on digits after 3 epochs they gave 10% held-out accuracy in eval mode where exact statistics gave 69%
    (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm": PreciseBN). The embedder runs in eval mode, so its
    features depend on these statistics. Only buffers change: the training trajectory is the same."""
    n = min(s.precise_bn, len(x))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if n < 2 or not bns:
        return
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(s.seed * 1_000_003 + epoch))[:n]
    momenta = [m.momentum for m in bns]
    model.eval()  # dropout off
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for i in range(0, n, s.batch_size):
        part = idx[i:i + s.batch_size]
        if len(part) > 1:
            model(_normalised(x[part], norm).to(device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, norm=None, device=None, batch: int = 256) -> dict:
    """Mean cross-entropy and accuracy of `model` (eval mode) on (n, 3, s, s) inputs in [0, 1]."""
    device = device or next(model.parameters()).device
    model.eval()
    loss = correct = 0.0
    for i in range(0, len(y), batch):
        logits = model(_normalised(x[i:i + batch], norm).to(device))
        yb = y[i:i + batch].to(device)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return {"loss": loss / len(y), "accuracy": correct / len(y)}


# ---- checkpoints ---------------------------------------------------------------------------------------------


def ckpt_path(out: str | Path) -> Path:
    return Path(str(out) + ".ckpt")


def _resume_state(path: Path, cfg, s: TrainSettings, data_sig: str) -> dict:
    ck = dn.read_checkpoint(path)
    train = ck.get("train")
    if not isinstance(train, dict):
        raise InvalidArgument(f"{str(path)!r} holds no training state to resume from")
    wanted = {"config": asdict(cfg), "settings": asdict(s), "data": data_sig}
    saved = {"config": ck["config"], "settings": train.get("settings"), "data": train.get("data")}
    diff = [k for k in wanted if wanted[k] != saved[k]]
    if diff:
        raise InvalidArgument(f"cannot resume from {str(path)!r}: its {', '.join(diff)} differ from this run's "
                              f"(saved {[saved[k] for k in diff]!r}, now {[wanted[k] for k in diff]!r}); "
                              "rerun the original command with --resume")
    return ck


# ---- the loop ------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One training run's state: the split, the model and optimiser on their device, and the epochs done."""

    out: Path
    device: torch.device
    tr: np.ndarray
    te: np.ndarray
    xtr: torch.Tensor
    ytr: torch.Tensor
    xte: torch.Tensor
    yte: torch.Tensor
    normalisation: dict | None
    norm: tuple[torch.Tensor, torch.Tensor] | None
    model: dn.DenseNetBC
    opt: torch.optim.Optimizer
    signature: str
    history: list[dict] = field(default_factory=list)


def _check_fits(data: Dataset, cfg: dn.DenseNetBCConfig) -> None:
    if cfg.n_classes != len(data.classes):
        raise InvalidArgument(f"config n_classes={cfg.n_classes} but the data has {len(data.classes)} classes")
    if tuple(data.x.shape[1:]) != (cfg.in_channels, cfg.in_size, cfg.in_size):
        raise InvalidArgument(f"data of shape {tuple(data.x.shape[1:])} for a model taking "
                              f"{(cfg.in_channels, cfg.in_size, cfg.in_size)}")


def _start(data: Dataset, out: Path, cfg: dn.DenseNetBCConfig, s: TrainSettings, device) -> _Run:
    """Split, normalisation, a freshly seeded model and its SGD optimiser."""
    from simdex.embedder.base import pick_device  # noqa: PLC0415

    dev = pick_device(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    tr, te = split(data, s.holdout, s.seed)
    xtr = data.x[tr]
    normalisation = channel_stats(xtr) if s.normalise else None
    model = dn.build(cfg, seed=s.seed).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=True,
                          weight_decay=s.weight_decay)
    return _Run(out, dev, tr, te, xtr, data.y[tr], data.x[te], data.y[te], normalisation,
                dn.normalisation_tensors(normalisation), model, opt, data.signature())


def _resume(run: _Run, cfg: dn.DenseNetBCConfig, s: TrainSettings) -> None:
    """Load the model, optimiser and history of `<out>.ckpt` when it exists (else start from epoch 1)."""
    path = ckpt_path(run.out)
    if not path.is_file():
        LOG.info("no checkpoint %s: starting from epoch 1", path)
        return
    ck = _resume_state(path, cfg, s, run.signature)
    run.model.load_state_dict(ck["state_dict"])
    run.opt.load_state_dict(ck["train"]["optimizer"])
    run.history = list(ck["train"]["history"])
    LOG.info("resuming %s after epoch %d of %d", path, len(run.history), s.epochs)


def _epoch(run: _Run, epoch: int, s: TrainSettings, progress: bool) -> dict:
    """Train one epoch, recompute the BatchNorm statistics, evaluate on the held-out split: the epoch's record."""
    t0 = time.perf_counter()
    for g in run.opt.param_groups:
        g["lr"] = lr_at(epoch, s)
    rec = {"epoch": epoch + 1, "lr": lr_at(epoch, s)}
    rec.update(_train_epoch(run.model, run.opt, run.xtr, run.ytr, epoch, s, run.norm, run.device, progress))
    precise_bn(run.model, run.xtr, epoch, s, run.norm, run.device)
    ev = evaluate(run.model, run.xte, run.yte, run.norm, run.device)
    rec.update(held_out_loss=ev["loss"], held_out_accuracy=ev["accuracy"], seconds=time.perf_counter() - t0)
    return rec


def _save_epoch(run: _Run, classes: list[str], s: TrainSettings) -> None:
    """The resumable training checkpoint `<out>.ckpt` after the last epoch of `run.history` (atomic)."""
    rec = run.history[-1]
    metrics = {k: rec[k] for k in ("held_out_accuracy", "held_out_loss", "train_loss")}
    ck = dn.checkpoint_dict(run.model, classes, run.normalisation, metrics, len(run.history))
    ck["train"] = {"optimizer": run.opt.state_dict(), "settings": asdict(s), "data": run.signature,
                   "history": run.history, "split": {"train": len(run.tr), "held_out": len(run.te)}}
    atomic_save(ck, ckpt_path(run.out))


def _save_final(run: _Run, classes: list[str], s: TrainSettings) -> TrainResult:
    """The weights-only checkpoint `out` (what the embedder loads) and the run's result."""
    last = run.history[-1]
    metrics = {"held_out_accuracy": last["held_out_accuracy"], "held_out_loss": last["held_out_loss"],
               "train_loss": last["train_loss"], "held_out": len(run.te), "train": len(run.tr),
               "seconds": sum(r["seconds"] for r in run.history), "settings": asdict(s)}
    atomic_save(dn.checkpoint_dict(run.model, classes, run.normalisation, metrics, len(run.history)), run.out)
    return TrainResult(last["held_out_accuracy"], len(run.history), metrics["seconds"], run.out, run.history)


def train(data: Dataset, out: str | Path, cfg: dn.DenseNetBCConfig | None = None,
          settings: TrainSettings | None = None, device: str | torch.device | None = None, resume: bool = False,
          progress: bool = False, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train on `data`, checkpoint every epoch to `<out>.ckpt`, write the final checkpoint to `out`.

    `cfg` defaults to DenseNet-BC-100 (k = 12) with as many classes as `data`. `on_epoch` gets each epoch's
    record (epoch, lr, train_loss, train_accuracy, held_out_loss, held_out_accuracy, seconds) after its
    checkpoint is written; an exception it raises (or a Ctrl-C) stops training with that checkpoint intact."""
    s = settings or TrainSettings()
    cfg = cfg or replace(dn.DEFAULT, n_classes=len(data.classes))
    _check_fits(data, cfg)
    run = _start(data, Path(out), cfg, s, device)
    if resume:
        _resume(run, cfg, s)
    for epoch in range(len(run.history), s.epochs):
        run.history.append(_epoch(run, epoch, s, progress))
        _save_epoch(run, data.classes, s)
        LOG.debug("epoch %s", run.history[-1])
        if on_epoch:
            on_epoch(run.history[-1])
    return _save_final(run, data.classes, s)
