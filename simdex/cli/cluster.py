"""`simdex cluster`: mean shift over a collection (JSON summary out; labels file and PCA plot on request)."""
from __future__ import annotations

import json

from simdex.cli.common import client_args, json_or_none, open_client
from simdex.defaults import CLUSTER_KERNEL, CLUSTER_MAX_SEEDS


def _write_labels(path: str, r) -> None:
    """Each member's cluster as JSON lines {"id", "cluster"} (-1: unclustered)."""
    with open(path, "w") as fh:
        for id_, lab in zip(r.ids, r.labels.tolist()):
            fh.write(json.dumps({"id": id_, "cluster": lab}) + "\n")


def cmd_cluster(args) -> int:
    with open_client(args) as c:
        r = c.cluster(args.collection, args.bandwidth, filter=json_or_none(args.filter), kernel=args.kernel,
                      bin_seeding=args.bin_seeding, cluster_all=not args.no_cluster_all,
                      max_seeds=args.max_seeds or None)
        if args.labels:
            _write_labels(args.labels, r)
        if args.plot:
            from simdex.cli.plot import cluster_scatter  # noqa: PLC0415 - matplotlib only when asked

            cluster_scatter(c, args.collection, r, args.plot, args.plot_points)
    print(json.dumps({"bandwidth": r.bandwidth, "n_iter": r.n_iter, "n_points": len(r.ids),
                      "unclustered": int((r.labels < 0).sum()),
                      "clusters": [{"label": k.label, "size": k.size, "representatives": k.representatives}
                                   for k in r.clusters]}))
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("cluster", help="mean shift clusters of a collection (JSON summary out)")
    s.add_argument("collection")
    s.add_argument("--bandwidth", type=float, help="kernel radius (default: estimated)")
    s.add_argument("--kernel", default=CLUSTER_KERNEL, choices=["flat", "gaussian"])
    s.add_argument("--filter", help="cluster only the items matching this metadata filter (JSON)")
    s.add_argument("--bin-seeding", action="store_true")
    s.add_argument("--no-cluster-all", action="store_true", help="leave points beyond every mode's reach as -1")
    s.add_argument("--max-seeds", type=int, default=CLUSTER_MAX_SEEDS, help="sampled seeds (0: every point)")
    s.add_argument("--labels", help="write each member's cluster as JSON lines to this file")
    s.add_argument("--plot", help="write a 2-D PCA scatter coloured by cluster to this PNG")
    s.add_argument("--plot-points", type=int, default=5000, help="members drawn in the plot (a sample)")
    client_args(s)
    s.set_defaults(func=cmd_cluster)
