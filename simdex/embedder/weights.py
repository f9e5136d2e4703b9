"""Where embedder weights live: the torch hub cache (torchvision's file names) or an explicit file. Never downloaded."""
from __future__ import annotations

import os
from pathlib import Path

from simdex.errors import FailedPrecondition


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, worked out as torch.hub.get_dir() does ($TORCH_HOME, $XDG_CACHE_HOME/torch,
    ~/.cache/torch) without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


class MissingWeights(FailedPrecondition):
    """The embedder's weights file is not where it should be."""


def resolve(name: str, weights_file: str, override: str | os.PathLike | None, url: str = "") -> Path | None:
    """The weights file to load for embedder `name`: `override` if given, else `weights_file` in the hub cache.

    Returns None for random-weight embedders (`weights_file` == "" and no override). Raises MissingWeights naming
    the file and where to put it."""
    if override:
        p = Path(override).expanduser()
        if not p.is_file():
            raise MissingWeights(f"embedder {name!r}: weights file {str(p)!r} does not exist")
        return p
    if not weights_file:
        return None
    p = hub_checkpoints() / weights_file
    if not p.is_file():
        fetch = f" (download it on a machine with internet from {url})" if url else ""
        raise MissingWeights(
            f"embedder {name!r} needs its weights file {weights_file!r}: put it in {str(p.parent)!r}{fetch}, "
            f"set TORCH_HOME to a folder holding hub/checkpoints/{weights_file}, or give the file explicitly "
            f"(`simdex serve --weights {name}=FILE`, or load({name!r}, weights=FILE)); nothing is downloaded")
    return p
