"""Pictures for people: a 2-D PCA scatter of a clustering, coloured by cluster (needs matplotlib)."""
from __future__ import annotations

import numpy as np


def cluster_scatter(client, collection: str, result, path: str, max_points: int = 5000, seed: int = 0) -> None:
    """Fetch a sample of the clustered vectors, project them on their first two principal components and draw
    them coloured by cluster label (grey for -1), with the cluster centres as black crosses."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(result.ids), size=min(max_points, len(result.ids)), replace=False))
    items = client.get(collection, [result.ids[i] for i in pick])
    X = np.stack([it.vector for it in items]).astype(np.float64)
    info = client.get_collection(collection)
    if info.metric == "cosine":
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.eye(X.shape[1], 2)
    P = (X - mean) @ basis
    C = (np.stack([c.center for c in result.clusters]) - mean) @ basis if result.clusters else np.zeros((0, 2))
    labels = result.labels[pick]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    out = labels < 0
    ax.scatter(P[out, 0], P[out, 1], s=4, c="lightgrey", label="unclustered" if out.any() else None)
    ax.scatter(P[~out, 0], P[~out, 1], s=4, c=labels[~out], cmap="tab20")
    ax.scatter(C[:, 0], C[:, 1], marker="x", s=60, c="black", label="centres")
    ax.set_title(f"{collection}: {len(result.clusters)} clusters, bandwidth {result.bandwidth:.3g} "
                 f"({len(pick)} of {len(result.ids)} points)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
