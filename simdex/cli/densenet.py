"""`simdex train-densenet`: train the DenseNet-BC behind the `densenet-bc` embedder (torch imported on use)."""
from __future__ import annotations

import json
import sys


def cmd_train_densenet(args) -> int:
    from simdex.embedder import densenet_bc as dn  # noqa: PLC0415
    from simdex.training import densenet as td  # noqa: PLC0415

    if bool(args.data) == bool(args.sklearn_digits):
        raise SystemExit("train-densenet needs exactly one of DATA (a folder of class sub-folders) "
                         "or --sklearn-digits")
    if args.limit is not None and not args.sklearn_digits:
        raise SystemExit("--limit goes with --sklearn-digits")
    data = (td.load_sklearn_digits(limit=args.limit) if args.sklearn_digits else td.load_folder(args.data))
    cfg = dn.DenseNetBCConfig(depth=args.depth, growth=args.growth, compression=args.compression,
                              dropout=args.dropout, n_classes=len(data.classes))
    settings = td.TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                weight_decay=args.weight_decay, seed=args.seed, holdout=args.holdout,
                                augment=args.augment, normalise=args.normalise, precise_bn=args.precise_bn)
    print(json.dumps({"images": len(data.y), "classes": len(data.classes), "dim": cfg.dim,
                      "channels": cfg.channels(), "settings": settings.__dict__}), file=sys.stderr)

    def report(rec: dict) -> None:
        print(f"epoch={rec['epoch']} lr={rec['lr']:g} train_loss={rec['train_loss']:.4f} "
              f"train_accuracy={rec['train_accuracy']:.4f} held_out_loss={rec['held_out_loss']:.4f} "
              f"held_out_accuracy={rec['held_out_accuracy']:.4f} seconds={rec['seconds']:.1f}", flush=True)

    try:
        r = td.train(data, args.out, cfg, settings, device=args.device, resume=args.resume,
                     progress=not args.no_progress, on_epoch=report)
    except KeyboardInterrupt:
        print(f"interrupted: {td.ckpt_path(args.out)} holds the last finished epoch; rerun the same command "
              "with --resume to continue", file=sys.stderr)
        return 130
    print(f"held_out_accuracy={r.held_out_accuracy:.4f} epochs={r.epochs} seconds={r.seconds:.1f}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("train-densenet", help="train the DenseNet-BC of the densenet-bc embedder")
    s.add_argument("data", nargs="?", help="folder of class sub-folders of images")
    s.add_argument("--sklearn-digits", action="store_true",
                   help="train on scikit-learn's bundled 8x8 digits (upsampled to 32x32) instead of DATA")
    s.add_argument("--limit", type=int, help="--sklearn-digits: use only the first N images (quick runs)")
    s.add_argument("--out", required=True, help="final checkpoint (weights only); <out>.ckpt is the resume state")
    s.add_argument("--epochs", type=int, default=40, help="lr 0.1, /10 at 50%% and 75%% of these")
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--weight-decay", type=float, default=1e-4,
                   help="SGD weight decay (the lecture's Keras l2(1e-4) equals 2e-4 here)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (stratified, seeded)")
    s.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    s.add_argument("--augment", default="none", choices=["none", "crop", "crop-flip"],
                   help="4-pixel random crops (and horizontal flips); the lecture used none")
    s.add_argument("--normalise", action="store_true",
                   help="per-channel mean/std of the training split (recorded in the checkpoint); default /255")
    s.add_argument("--precise-bn", type=int, default=1024, metavar="N",
                   help="after each epoch, exact BatchNorm statistics over N training images (0: off)")
    s.add_argument("--resume", action="store_true", help="continue from <out>.ckpt (same command otherwise)")
    s.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g = s.add_argument_group("architecture (the registered densenet-bc embedder needs the defaults: dim 342)")
    g.add_argument("--depth", type=int, default=100)
    g.add_argument("--growth", type=int, default=12)
    g.add_argument("--compression", type=float, default=0.5)
    g.add_argument("--dropout", type=float, default=0.2)
    s.set_defaults(func=cmd_train_densenet)
