"""`simdex train-seq2seq`, `simdex eval-seq2seq` and `simdex translate`: the seq2seq translator from the shell.

torch is imported only when one of these commands runs, so the light client's CLI stays light."""
from __future__ import annotations

import json
import shlex
import sys

from simdex.cli.common import client_args, open_client


def cmd_train(args) -> int:
    from simdex.training.seq2seq import TrainOptions, train  # noqa: PLC0415

    o = TrainOptions(task=args.task, out=args.out, data=args.data or "", direction=args.direction, bpe=args.bpe,
                     src_vectors=args.src_vectors or "", tgt_vectors=args.tgt_vectors or "", epochs=args.epochs,
                     batch_size=args.batch_size, hidden=args.hidden, layers=args.layers, emb=args.emb,
                     dropout=args.dropout, lr=args.lr, tf_start=args.tf_start, tf_end=args.tf_end,
                     tf_steps=args.tf_steps, val_every=args.val_every, seed=args.seed, device=args.device or "",
                     resume=args.resume, max_minutes=args.max_minutes, max_len=args.max_len,
                     command=_command(args))
    print(json.dumps(train(o)))
    return 0


_TRAIN_OPTS = ("task", "data", "direction", "bpe", "src_vectors", "tgt_vectors", "out", "epochs", "batch_size",
               "hidden", "layers", "emb", "dropout", "lr", "tf_start", "tf_end", "tf_steps", "val_every", "max_len",
               "seed", "device", "max_minutes")


def _command(args) -> str:
    """The full equivalent command line (every option, defaults included), recorded in the checkpoint."""
    words = ["simdex", "train-seq2seq"]
    for name in _TRAIN_OPTS:
        value = getattr(args, name)
        if value not in (None, ""):
            words += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join(words + (["--resume"] if args.resume else []))


def cmd_eval(args) -> int:
    from simdex.embedder.seq2seq import spelling  # noqa: PLC0415
    from simdex.embedder.seq2seq.checkpoint import load_model  # noqa: PLC0415

    t = load_model(args.model, device=args.device)
    if t.task != "spelling-bee":
        raise SystemExit(f"model {args.model!r} is a {t.task} model, not a spelling bee")
    _, test = spelling.split()
    test = test[: args.limit] if args.limit else test
    src = [p for p, _ in test]
    hyp = [h for s in range(0, len(src), 1000) for h in t.translate(src[s:s + 1000], beam=args.beam)]
    right = sum(h == w for h, (_, w) in zip(hyp, test))
    for (p, w), h in list(zip(test, hyp))[: args.show]:
        print(json.dumps({"phonemes": p, "word": w, "spelled": h, "ok": h == w}))
    print(f"words={len(test)} beam={args.beam}")
    print(f"word_accuracy={right / max(1, len(test)):.4f}")
    return 0


def cmd_translate(args) -> int:
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.target:  # remote: the server's Translate RPC
        with open_client(args) as c:
            out = c.translate(texts, model=args.model, beam=args.beam)
    else:
        from simdex.embedder.seq2seq.checkpoint import load_model  # noqa: PLC0415

        out = load_model(args.model, device=args.device).translate(texts, beam=args.beam)
    for line in out:
        print(line)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("train-seq2seq", help="train the seq2seq translator (spelling bee or questions)")
    s.add_argument("--task", default="spelling-bee", choices=["spelling-bee", "translate"])
    s.add_argument("--data", help="translate: Giga-French file prefix (PREFIX.en / PREFIX.fr) or 'bundled'")
    s.add_argument("--direction", default="fr-en", choices=["fr-en", "en-fr"])
    s.add_argument("--bpe", type=int, default=0, help="translate: BPE merges (0: whole words)")
    s.add_argument("--src-vectors", help="word vectors for the source embedding (frozen)")
    s.add_argument("--tgt-vectors", help="word vectors for the target embedding (trainable)")
    s.add_argument("--out", required=True, help="checkpoint file (written at each validation)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--hidden", type=int, default=256)
    s.add_argument("--layers", type=int, default=2)
    s.add_argument("--emb", type=int, default=64, help="embedding size (without word vectors)")
    s.add_argument("--dropout", type=float, default=0.1)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--tf-start", type=float, default=1.0, help="teacher forcing ratio at the first step")
    s.add_argument("--tf-end", type=float, default=0.0, help="teacher forcing ratio after --tf-steps")
    s.add_argument("--tf-steps", type=int, default=0, help="steps of linear decay (0: the whole run)")
    s.add_argument("--val-every", type=int, default=500, help="steps between validations + checkpoints")
    s.add_argument("--max-len", type=int, default=30, help="translate: tokens kept per sentence")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    s.add_argument("--resume", action="store_true", help="continue from --out (same options)")
    s.add_argument("--max-minutes", type=float, default=0, help="stop (with a checkpoint) after this long")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval-seq2seq", help="spelling-bee word accuracy on the held-out 10%% (last line)")
    s.add_argument("--task", default="spelling-bee", choices=["spelling-bee"])
    s.add_argument("--model", default="spelling-bee", help="shipped model name or checkpoint file")
    s.add_argument("--beam", type=int, default=1)
    s.add_argument("--limit", type=int, default=0, help="only the first N held-out words")
    s.add_argument("--show", type=int, default=0, help="print the first N words as JSON lines")
    s.add_argument("--device")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("translate", help="translate texts (locally, or with --target over gRPC)")
    s.add_argument("text", nargs="*", help="texts (default: lines of stdin)")
    s.add_argument("--model", default="questions-fr-en", help="shipped model name or checkpoint file")
    s.add_argument("--beam", type=int, default=5)
    s.add_argument("--device")
    client_args(s)
    s.set_defaults(func=cmd_translate, target=None)  # no --target: run the model here
