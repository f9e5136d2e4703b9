"""The name registry of embedders. Listing needs no torch; loading imports the family module on demand.

Each entry binds a name to its modality, output dimension, weights file and factory. A factory is
"module:function", called as function(spec, weights: Path | None, device: torch.device) -> Embedder, where
`weights` is None only for random-weight entries (named "...-random", for tests and benchmarks)."""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from simdex.embedder import weights as wts
from simdex.errors import InvalidArgument


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    modality: str            # "image" | "text"
    dim: int
    factory: str             # "module:function", e.g. "simdex.embedder.vgg:load_fc6"
    weights_file: str = ""   # file name in the torch hub checkpoint folder; "" = random weights
    weights_url: str = ""    # where a person with internet can fetch it
    description: str = ""
    # bf16 autocast by default on CPUs with native bf16: only where bench/bf16.py measured recall@10 of its bf16
    # vectors >= 0.99 against fp32 (BF16_RECALL_AT_10; torchvision_common.bf16_default; SIMDEX_BF16=0|1 overrides)
    bf16: bool = False

    @property
    def random(self) -> bool:
        return not self.weights_file


# recall@10 of bf16 vectors against exact fp32 search, (cosine, l2), measured by bench/bf16.py on bench/compression.py's
# images (1,000 database vectors, 200 queries) with the random-weight variants (no pretrained weights were offline
# where it ran), on a CPU with avx512_bf16 and no AMX. An embedder runs bf16 by default on a bf16 CPU only where both
# are >= 0.99. densenet-bc runs fp32 always (densenet_bc.load_embedder; it measured 0.985 / 0.988).
BF16_RECALL_AT_10 = {"vgg16-fc6": (0.994, 0.993), "vgg16-fc7": (0.995, 0.993), "densenet121": (0.989, 0.993)}
BF16_MIN_RECALL = 0.99


def _bf16_ok(name: str) -> bool:
    return min(BF16_RECALL_AT_10.get(name, (0.0,))) >= BF16_MIN_RECALL


_VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_D121_URL = "https://download.pytorch.org/models/densenet121-a639ec97.pth"
_SPECS: dict[str, EmbedderSpec] = {}


def register(s: EmbedderSpec) -> EmbedderSpec:
    if s.name in _SPECS:
        raise ValueError(f"embedder {s.name!r} is already registered")
    _SPECS[s.name] = s
    return s


for _suffix, _file in (("", "vgg16-397923af.pth"), ("-random", "")):
    register(EmbedderSpec(f"vgg16-fc6{_suffix}", "image", 4096, "simdex.embedder.vgg:load_fc6", _file, _VGG_URL,
                          "VGG16 (ImageNet) first fully connected layer after its ReLU; 224x224 input",
                          bf16=_bf16_ok("vgg16-fc6")))
    register(EmbedderSpec(f"vgg16-fc7{_suffix}", "image", 4096, "simdex.embedder.vgg:load_fc7", _file, _VGG_URL,
                          "VGG16 (ImageNet) second fully connected layer after its ReLU; 224x224 input",
                          bf16=_bf16_ok("vgg16-fc7")))
for _suffix, _file in (("", "densenet121-a639ec97.pth"), ("-random", "")):
    register(EmbedderSpec(f"densenet121{_suffix}", "image", 1024, "simdex.embedder.densenet:load_densenet121",
                          _file, _D121_URL, "DenseNet-121 (ImageNet) features, ReLU and global average pool; "
                          "224x224 input", bf16=_bf16_ok("densenet121")))
for _suffix, _file in (("", "simdex-densenet-bc.pt"), ("-random", "")):
    register(EmbedderSpec(f"densenet-bc{_suffix}", "image", 342, "simdex.embedder.densenet_bc:load_embedder", _file,
                          "", "DenseNet-BC (depth 100, growth 12, compression 0.5) trained by "
                          "`simdex train-densenet`; global average pool; 32x32 input"))


def specs() -> list[EmbedderSpec]:
    _load_plugins()
    return sorted(_SPECS.values(), key=lambda s: s.name)


def spec(name: str) -> EmbedderSpec:
    _load_plugins()
    s = _SPECS.get(name)
    if s is None:
        raise InvalidArgument(f"embedder {name!r} is not registered; known: {sorted(_SPECS)}")
    return s


_plugins_loaded = False


def _load_plugins() -> None:
    """Families that register entries of their own (the seq2seq text encoder) do it on import."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for mod in ("simdex.embedder.seq2seq.registration",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def weights_path(name: str, override: str | os.PathLike | None = None) -> Path | None:
    s = spec(name)
    return wts.resolve(s.name, s.weights_file, override, s.weights_url)


def weights_present(name: str, override: str | os.PathLike | None = None) -> bool:
    try:
        weights_path(name, override)
        return True
    except wts.MissingWeights:
        return False


def _build(name: str, override, device):
    from simdex.embedder.base import pick_device

    s = spec(name)
    path = weights_path(name, override)
    module_name, fn = s.factory.split(":")
    factory = getattr(importlib.import_module(module_name), fn)
    emb = factory(s, path, pick_device(device))
    if emb.dim != s.dim:
        raise RuntimeError(f"embedder {name}: built with dim {emb.dim}, registered as {s.dim}")
    return emb


class EmbedderPool:
    """The embedders one server (or client) has loaded: each built once, on first use, then shared.

    `weights` maps embedder names to explicit weights files; others come from the torch hub cache."""

    def __init__(self, weights: dict[str, str] | None = None, device: str | None = None):
        self.weights = dict(weights or {})
        for name in self.weights:
            spec(name)  # unknown names fail at start, not at first use
        self.device = device
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        emb = self._loaded.get(name)
        if emb is None:
            with self._lock:
                emb = self._loaded.get(name)
                if emb is None:
                    emb = self._loaded[name] = _build(name, self.weights.get(name), self.device)
        return emb

    def loaded_fingerprint(self, name: str) -> str:
        emb = self._loaded.get(name)
        return emb.fingerprint if emb is not None else ""

    def present(self, name: str) -> bool:
        return weights_present(name, self.weights.get(name))

    def where(self, name: str) -> str:
        s = spec(name)
        if name in self.weights:
            return str(Path(self.weights[name]).expanduser())
        return str(wts.hub_checkpoints() / s.weights_file) if s.weights_file else ""


_default_pool = EmbedderPool()


def load(name: str, weights: str | os.PathLike | None = None, device: str | None = None):
    """Load embedder `name` (cached per process for the default weights and device)."""
    if weights is None and device is None:
        return _default_pool.get(name)
    return _build(name, weights, device)
