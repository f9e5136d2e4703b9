"""Training of the translator: the spelling bee (CMUdict) or French <-> English questions.

Adam with gradient clipping, a short warm-up then cosine learning-rate decay, teacher forcing decaying linearly
from 1 to 0 over the run (over steps; with `max_minutes`, over steps or time, whichever is further along),
batches of similar target length (less padding, so fewer decoder steps). Validation (teacher-forced loss +
free-running greedy exact match or BLEU) every `val_every` steps and at the end; checkpoints (atomic) at each
validation, resumable with `resume=True` (same model options; the schedules may be changed).

    metrics = train(TrainOptions(task="spelling-bee", out="sb.pt", epochs=8))
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from simdex.embedder.seq2seq import checkpoint as ckpt
from simdex.embedder.seq2seq import spelling
from simdex.embedder.seq2seq.model import Seq2Seq, Seq2SeqConfig, TeacherForcing, count_parameters
from simdex.embedder.seq2seq.text import Vocab, detokenize, pad_batch, tokenize
from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)
VAL_WORDS = 2000  # spelling bee: validation words carved out of the training 90% (the test 10% stays unseen)


@dataclass
class TrainOptions:
    task: str = "spelling-bee"            # "spelling-bee" | "translate"
    out: str = "model.pt"
    data: str = ""                        # translate: Giga-French prefix, or "bundled"
    direction: str = "fr-en"
    bpe: int = 0                          # translate: number of BPE merges (0: whole words)
    src_vectors: str = ""                 # translate: word-vector files for the embeddings (frozen source)
    tgt_vectors: str = ""
    epochs: int = 10
    batch_size: int = 128
    hidden: int = 256
    layers: int = 2
    emb: int = 64
    dropout: float = 0.1
    lr: float = 2e-3
    tf_start: float = 1.0
    tf_end: float = 0.0
    tf_steps: int = 0                     # 0: the whole run
    val_every: int = 500
    seed: int = 0
    device: str = ""
    resume: bool = False
    max_minutes: float = 0.0              # 0: no limit
    max_len: int = 30                     # translate: tokens kept per sentence (the lecture's 30)
    command: str = field(default="")

    def check(self) -> None:
        if self.task not in ckpt.TASKS:
            raise InvalidArgument(f"task must be one of {ckpt.TASKS}, got {self.task!r}")
        if self.task == "translate" and not self.data:
            raise InvalidArgument("translate needs data: a Giga-French file prefix or 'bundled'")
        if self.direction not in ("fr-en", "en-fr"):
            raise InvalidArgument(f"direction must be fr-en or en-fr, got {self.direction!r}")
        for name in ("epochs", "batch_size", "val_every", "max_len"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.max_minutes < 0 or self.bpe < 0:
            raise InvalidArgument(f"bad lr {self.lr!r}, max_minutes {self.max_minutes!r} or bpe {self.bpe!r}")


@dataclass
class Data:
    src_vocab: Vocab
    tgt_vocab: Vocab
    pipeline: dict
    train: list[tuple[list[int], list[int]]]
    val_src: list[str]                    # raw validation texts and references
    val_ref: list[str]
    vectors: dict = field(default_factory=dict)  # "src"/"tgt" -> (V, d) float32 matrix


def _pairs(o: TrainOptions) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    if o.task == "spelling-bee":
        train, _test = spelling.split()
        return train[VAL_WORDS:], train[:VAL_WORDS]
    from simdex.embedder.seq2seq import corpora  # noqa: PLC0415

    pairs = corpora.bundled_questions(o.direction) if o.data == "bundled" else corpora.giga_french(o.data, o.direction)
    return train_test_split(pairs, test_size=0.1, random_state=o.seed)


def prepare(o: TrainOptions) -> Data:
    """Vocabularies (from the training pairs), id sequences and the pipeline stored with the model."""
    train, val = _pairs(o)
    if o.task == "spelling-bee":
        src_tok = [spelling.source_tokens(s) for s, _ in train]
        tgt_tok = [spelling.target_tokens(t) for _, t in train]
        src_vocab, tgt_vocab = Vocab(spelling.phoneme_symbols()), Vocab(list(spelling.LETTERS))
        pipeline = {"max_src_len": 0, "max_tgt_len": spelling.MAX_LEN + 5}
    else:
        src_tok = [tokenize(s)[: o.max_len] for s, _ in train]
        tgt_tok = [tokenize(t)[: o.max_len] for _, t in train]
        bpe_state = None
        if o.bpe:
            from simdex.embedder.seq2seq.bpe import BPE  # noqa: PLC0415

            bpe = BPE.learn(src_tok + tgt_tok, num_merges=o.bpe)  # one joint model: shared sub-words
            src_tok, tgt_tok, bpe_state = [bpe.encode(s) for s in src_tok], [bpe.encode(t) for t in tgt_tok], \
                bpe.to_dict()
        src_vocab, tgt_vocab = Vocab.build(src_tok), Vocab.build(tgt_tok)
        longest = max(len(t) for t in tgt_tok)
        pipeline = {"direction": o.direction, "bpe": bpe_state, "max_src_len": 2 * o.max_len + 1 if o.bpe else
                    o.max_len + 1, "max_tgt_len": longest + 1}
    ids = [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in zip(src_tok, tgt_tok)]
    vectors = {}
    for side, path, vocab in (("src", o.src_vectors, src_vocab), ("tgt", o.tgt_vectors, tgt_vocab)):
        if path:
            from simdex.embedder.seq2seq.wordvec import load_vectors  # noqa: PLC0415

            # BPE units: a word-final unit ("quelle</w>") looks up its word; inner units ("popul") match nothing.
            names = [t[:-4] if t.endswith("</w>") else t + "@@" if o.bpe and i >= 4 else t
                     for i, t in enumerate(vocab.tokens)]
            vectors[side], coverage = load_vectors(path, names, seed=o.seed)
            LOG.info("%s vectors from %s: coverage %s", side, path, coverage)
    LOG.info("%s: %d training pairs, %d validation, vocabularies %d -> %d", o.task, len(ids), len(val),
             len(src_vocab), len(tgt_vocab))
    return Data(src_vocab, tgt_vocab, pipeline, ids, [s for s, _ in val], [t for _, t in val], vectors)


def build_model(o: TrainOptions, d: Data) -> Seq2Seq:
    src_emb = d.vectors["src"].shape[1] if "src" in d.vectors else o.emb
    tgt_emb = d.vectors["tgt"].shape[1] if "tgt" in d.vectors else o.emb
    cfg = Seq2SeqConfig(len(d.src_vocab), len(d.tgt_vocab), src_emb, tgt_emb, o.hidden, o.layers,
                        dropout=o.dropout, freeze_src_emb="src" in d.vectors)
    model = Seq2Seq(cfg)
    with torch.no_grad():  # pretrained vectors: the French side frozen, as in the lecture
        for side, emb in (("src", model.encoder.emb), ("tgt", model.decoder.emb)):
            if side in d.vectors:
                emb.weight.copy_(torch.as_tensor(d.vectors[side]))
    return model


def batches(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of indices with similar `lengths`: shuffle, sort within chunks of 50 batches by length,
    cut into batches, shuffle the batch order. Deterministic for a given generator state."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    chunk = batch_size * 50
    out = []
    for s in range(0, len(perm), chunk):
        part = sorted(perm[s:s + chunk], key=lambda i: lengths[i])
        out.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in order]


def lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, min(200, total // 20))
    if step < warm:
        return base * (step + 1) / warm
    f = min(1.0, (step - warm) / max(1, total - warm))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f)))


def _schedule_step(step: int, total: int, seconds: float, max_minutes: float) -> int:
    """The step the schedules (learning rate, teacher forcing) use: with a time limit, whichever of steps or
    time is further along, so a run cut short by `max_minutes` still ends decayed (teacher forcing at its end
    value, the lowest learning rate). Without one, the step itself (deterministic)."""
    if not max_minutes:
        return step
    return max(step, int(total * seconds / (max_minutes * 60)))


def _tensors(d: Data, idx: list[int], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, lengths = pad_batch([d.train[i][0] for i in idx])
    tgt, _ = pad_batch([d.train[i][1] for i in idx])
    return torch.from_numpy(src).to(device), torch.from_numpy(lengths), torch.from_numpy(tgt).to(device)


def loss_fn(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over real target tokens (EOS included, PAD ignored)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=0)


def validate(t: ckpt.Translator, d: Data, limit: int = 2000) -> dict:
    """Teacher-forced loss and free-running greedy quality on (at most `limit`) validation pairs."""
    src, ref = d.val_src[:limit], d.val_ref[:limit]
    if t.task == "translate":  # references as the model writes text: lowercase, the tokenizer's spacing
        ref = [detokenize(tokenize(r)) for r in ref]
    t.model.eval()
    with torch.no_grad():
        losses = []
        for s in range(0, len(src), 512):
            x, lengths = t.batch(t.source_ids(src[s:s + 512]))
            y, _ = pad_batch([t.tgt_vocab.encode(t.target_tokens(r)) for r in ref[s:s + 512]])
            y = torch.from_numpy(y).to(t.device)
            losses.append(float(loss_fn(t.model(x, lengths, y), y)) * len(y))
    hyp = t.translate(src, beam=1)
    out = {"val_loss": sum(losses) / max(1, len(src))}
    if t.task == "spelling-bee":
        out["val_word_accuracy"] = sum(h == r for h, r in zip(hyp, ref)) / max(1, len(ref))
    else:
        out["val_bleu"] = bleu(hyp, ref)
    t.model.train()
    return out


def bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (0-100): sacrebleu's when installed, else 4-gram BLEU with brevity penalty over the lecture's
    tokens (close to sacrebleu with tokenize='none' on tokenized text)."""
    try:
        import sacrebleu  # noqa: PLC0415
    except ImportError:
        return _bleu([tokenize(h) for h in hyps], [tokenize(r) for r in refs])
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def _bleu(hyps: list[list[str]], refs: list[list[str]], n: int = 4) -> float:
    from collections import Counter  # noqa: PLC0415

    match, total = [0] * n, [0] * n
    for h, r in zip(hyps, refs):
        for k in range(1, n + 1):
            hc = Counter(tuple(h[i:i + k]) for i in range(len(h) - k + 1))
            rc = Counter(tuple(r[i:i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[k - 1] += max(0, len(h) - k + 1)
    if min(match) == 0:
        return 0.0
    hl, rl = sum(map(len, hyps)), sum(map(len, refs))
    bp = 1.0 if hl > rl else math.exp(1 - rl / max(hl, 1))
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / n)


@dataclass
class _Loop:
    """One training run: options, data, model, optimiser, schedules and where it stands (step, clock)."""

    o: TrainOptions
    d: Data
    model: Seq2Seq
    opt: torch.optim.Optimizer
    t: ckpt.Translator
    tf: TeacherForcing
    per_epoch: int
    total: int
    state: dict
    t0: float = 0.0
    step: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _setup(o: TrainOptions) -> _Loop:
    """Data, model and optimiser, seeded; restored from `o.out` with `o.resume` when it exists."""
    from simdex.embedder.base import pick_device  # noqa: PLC0415

    device = pick_device(o.device or None)
    torch.manual_seed(o.seed)
    d = prepare(o)
    model = build_model(o, d).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=o.lr)
    per_epoch = math.ceil(len(d.train) / o.batch_size)
    total = per_epoch * o.epochs
    tf = TeacherForcing(o.tf_steps or total, o.tf_start, o.tf_end)
    state = {"step": 0, "seconds": 0.0, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if o.resume and Path(o.out).is_file():
        state = _restore(o, model, opt)
    t = ckpt.Translator(model, d.src_vocab, d.tgt_vocab, o.task, d.pipeline, device)
    LOG.info("model: %d parameters, %d steps (%d per epoch) on %s", count_parameters(model), total, per_epoch,
             device)
    return _Loop(o, d, model, opt, t, tf, per_epoch, total, state, time.monotonic() - state["seconds"],
                 state["step"])


def _step(L: _Loop, idx: list[int]) -> tuple[float, int]:
    """One optimiser step on the training pairs `idx`: (loss, the schedule step it used)."""
    sched = _schedule_step(L.step, L.total, L.elapsed(), L.o.max_minutes)
    for g in L.opt.param_groups:
        g["lr"] = lr_at(sched, L.total, L.o.lr)
    src, lengths, tgt = _tensors(L.d, idx, L.t.device)
    loss = loss_fn(L.model(src, lengths, tgt, teacher_forcing=L.tf(sched)), tgt)
    L.opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(L.model.parameters(), 1.0)
    L.opt.step()
    L.step += 1
    return loss.item(), sched


def _validate_and_save(L: _Loop, sched: int) -> dict:
    """Validation metrics at the current step, written with a checkpoint to `o.out`."""
    metrics = validate(L.t, L.d)
    metrics.update(step=L.step, epoch=round(L.step / L.per_epoch, 3), teacher_forcing=round(L.tf(sched), 4),
                   minutes=round(L.elapsed() / 60, 2))
    L.state.update(step=L.step, seconds=L.elapsed())
    _save(L.o, L.t, L.opt, metrics, L.state, L.total)
    return metrics


def train(o: TrainOptions) -> dict:
    """Train (or resume) and write checkpoints to `o.out`. Returns the last validation metrics."""
    from tqdm import tqdm  # noqa: PLC0415

    o.check()
    L = _setup(o)
    tgt_len = [len(p[1]) for p in L.d.train]
    metrics: dict = {}
    bar = tqdm(total=L.total, initial=L.step, desc=f"train {o.task}", file=sys.stderr, disable=None)
    L.model.train()
    while L.step < L.total:
        epoch, pos = divmod(L.step, L.per_epoch)
        gen = torch.Generator().manual_seed(o.seed * 100_003 + epoch)  # each epoch's order, also after resume
        for idx in batches(tgt_len, o.batch_size, gen)[pos:]:
            loss, sched = _step(L, idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tf=f"{L.tf(sched):.2f}", refresh=False)
            out_of_time = o.max_minutes and L.elapsed() > o.max_minutes * 60
            if L.step % o.val_every == 0 or L.step == L.total or out_of_time:
                metrics = _validate_and_save(L, sched)
                bar.write(json.dumps(metrics), file=sys.stderr)
            if out_of_time:
                LOG.warning("stopping after %.1f minutes (--max-minutes) at step %d of %d", o.max_minutes, L.step,
                            L.total)
                bar.close()
                return metrics
    bar.close()
    return metrics


def _save(o: TrainOptions, t: ckpt.Translator, opt, metrics: dict, state: dict, total: int) -> None:
    info = {"command": o.command, "commands": [*state.get("commands", []), o.command], "seed": o.seed,
            "started": state["started"], "seconds": round(state["seconds"], 1),
            "step": state["step"], "total_steps": total, "options": asdict(o)}
    ck = ckpt.checkpoint_dict(t.model, t.src_vocab, t.tgt_vocab, o.task, t.pipeline, metrics, info)
    ck["optimizer"] = opt.state_dict()
    ck["rng"] = torch.get_rng_state()
    ckpt.atomic_save(ck, o.out)


def _restore(o: TrainOptions, model: Seq2Seq, opt) -> dict:
    ck = ckpt.read(o.out)
    if ck["config"] != model.cfg.to_dict() or "optimizer" not in ck:
        raise InvalidArgument(f"cannot resume from {o.out!r}: it was trained with other model options or is "
                              "an inference-only checkpoint")
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng"])
    info = ck["train"]
    LOG.info("resuming %s at step %d", o.out, info["step"])
    return {"step": int(info["step"]), "seconds": float(info["seconds"]), "started": info["started"],
            "commands": list(info.get("commands", [info.get("command", "")]))}  # every run that built it
