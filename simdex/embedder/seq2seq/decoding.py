"""Free-running decoding of a `Seq2Seq`: greedy and beam search, both batched over sentences.

Both return, per sentence, the target ids without SOS and EOS (list[int]) and a score: the sum of the token
log-probabilities of the chosen sequence, EOS included when it was produced. A sentence that reaches `max_len`
without EOS is returned as it stands.

Beam search keeps `beam` live hypotheses per sentence. Each step looks at the best 2*beam extensions: those that
end in EOS and rank within the best `beam` are set aside as finished (scored `logp / length**alpha`, length
counting EOS); the best `beam` others go on. A sentence stops when it has `beam` finished hypotheses; at `max_len`
its live hypotheses count as finished. The best finished hypothesis by normalised score wins. With beam 1 this is
exactly greedy decoding.
"""
from __future__ import annotations

import logging

import torch

from simdex.embedder.seq2seq.model import EOS, SOS, Seq2Seq
from simdex.errors import InvalidArgument

LOG = logging.getLogger(__name__)
Result = list[tuple[list[int], float]]


@torch.no_grad()
def greedy(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, max_len: int) -> Result:
    """src (B, S) int64, lengths (B,) -> [(ids, logp)] * B, argmax at each step until EOS or max_len."""
    _check(max_len, 1)
    mem, h = model.encode(src, lengths)
    b = src.shape[0]
    y = torch.full((b,), SOS, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    score = torch.zeros(b, device=src.device)
    toks = []
    for _ in range(max_len):
        logits, h, _ = model.decoder.step(y, h, mem)
        logp = torch.log_softmax(logits.float(), dim=1)
        best, y = logp.max(dim=1)
        score += torch.where(done, torch.zeros_like(best), best)
        toks.append(torch.where(done, torch.full_like(y, EOS), y))
        done |= y == EOS
        if bool(done.all()):
            break
    ids = torch.stack(toks, dim=1).tolist() if toks else [[] for _ in range(b)]
    return [(_strip(row), float(s)) for row, s in zip(ids, score.tolist())]


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, max_len: int, beam: int = 5,
                alpha: float = 1.0) -> Result:
    """src (B, S) int64, lengths (B,) -> [(ids, logp)] * B, the best of `beam` hypotheses per sentence."""
    _check(max_len, beam)
    mem, h = model.encode(src, lengths)
    b, k, dev = src.shape[0], beam, src.device
    mem, h = mem.repeat(k), h.repeat_interleave(k, dim=1)
    # Only the first copy of each sentence is live at the start, so the k beams do not start identical.
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    hist = torch.empty((b, k, 0), dtype=torch.long, device=dev)
    y = torch.full((b * k,), SOS, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    for t in range(max_len):
        logits, h, _ = model.decoder.step(y, h, mem)
        logp = torch.log_softmax(logits.float(), dim=1)
        v = logp.shape[1]
        cand = (scores.unsqueeze(2) + logp.view(b, k, v)).view(b, k * v)
        top_s, top_i = cand.topk(min(2 * k, k * v), dim=1)  # (b, 2k): holds >= k non-EOS (one EOS per beam)
        src_beam, tok = top_i // v, top_i % v
        is_eos = tok == EOS
        _set_aside(finished, done, top_s, src_beam, tok, is_eos, hist, t, k, alpha)
        if all(done):
            break
        # The best k non-EOS extensions go on (stable sort keeps their score order).
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
        scores = top_s.gather(1, order)
        keep_beam, y2 = src_beam.gather(1, order), tok.gather(1, order)
        hist = torch.cat([hist.gather(1, keep_beam.unsqueeze(2).expand(-1, -1, hist.shape[2])),
                          y2.unsqueeze(2)], dim=2)
        rows = (keep_beam + torch.arange(b, device=dev).unsqueeze(1) * k).view(-1)
        h, y = h[:, rows], y2.view(-1)
    else:
        _flush_live(finished, done, scores, hist, alpha)
    return [_best(f) for f in finished]


def _set_aside(finished, done, top_s, src_beam, tok, is_eos, hist, t, k, alpha) -> None:
    """Record the EOS extensions ranked within the best k of each unfinished sentence (a few per step)."""
    hits = (is_eos[:, :k] & torch.isfinite(top_s[:, :k])).nonzero().tolist()
    if not hits:
        return
    s_cpu, beam_cpu = top_s.tolist(), src_beam.tolist()
    for i, j in hits:
        if done[i]:
            continue
        logp = s_cpu[i][j]
        ids = hist[i, beam_cpu[i][j]].tolist()
        finished[i].append((logp / float(t + 1) ** alpha, logp, ids))
        done[i] = len(finished[i]) >= k


def _flush_live(finished, done, scores, hist, alpha) -> None:
    """At max_len: the live hypotheses of unfinished sentences count as finished (no EOS, length max_len)."""
    s_cpu, n = scores.tolist(), hist.shape[2]
    for i in range(len(finished)):
        if done[i]:
            continue
        for j, logp in enumerate(s_cpu[i]):
            if logp != float("-inf"):
                finished[i].append((logp / float(max(n, 1)) ** alpha, logp, hist[i, j].tolist()))


def _best(f: list[tuple[float, float, list[int]]]) -> tuple[list[int], float]:
    _, logp, ids = max(f, key=lambda r: r[0])  # max keeps the first of equals: the earlier finished
    return ids, logp


def _strip(row: list[int]) -> list[int]:
    return row[: row.index(EOS)] if EOS in row else row


def _check(max_len: int, beam: int) -> None:
    if not isinstance(max_len, int) or max_len < 1:
        raise InvalidArgument(f"max_len must be an int >= 1, got {max_len!r}")
    if not isinstance(beam, int) or beam < 1:
        raise InvalidArgument(f"beam must be an int >= 1, got {beam!r}")
