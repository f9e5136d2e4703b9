"""Searches running while writes, deletes and index rebuilds happen: every hit's id matches its distance."""
import threading

import numpy as np

from simdex.errors import SimdexError


def test_hits_stay_consistent_under_concurrent_writes_and_rebuilds(sqlite_service):
    s = sqlite_service
    d = 8
    rng = np.random.default_rng(12)
    truth: dict[str, list[np.ndarray]] = {}  # every version each id ever had
    lock = threading.Lock()
    s.create_collection("cc", d, "l2", "HNSW16")
    x0 = rng.standard_normal((3000, d)).astype(np.float32)
    ids0 = [f"base{i}" for i in range(3000)]
    s.upsert("cc", ids0, x0)
    for i, v in zip(ids0, x0):
        truth[i] = [v]
    errors: list[str] = []
    stop = threading.Event()

    def writer():
        wrng = np.random.default_rng(13)
        for round_ in range(12):
            # replace 1,200 vectors (tombstones pile up and trigger compaction rebuilds) and add new ones
            pick = [f"base{i}" for i in wrng.choice(3000, 1200, replace=False)]
            xs = wrng.standard_normal((1200, d)).astype(np.float32)
            new = [f"w{round_}-{i}" for i in range(100)]
            xn = wrng.standard_normal((100, d)).astype(np.float32)
            with lock:
                s.upsert("cc", pick + new, np.concatenate([xs, xn]))
                for i, v in zip(pick + new, np.concatenate([xs, xn])):
                    truth.setdefault(i, []).append(v)
        stop.set()

    def reader(seed):
        rrng = np.random.default_rng(seed)
        while not stop.is_set():
            xq = rrng.standard_normal((int(rrng.integers(1, 4)), d)).astype(np.float32)
            try:
                hits, _ = s.search("cc", xq, 5)
            except SimdexError as exc:
                errors.append(repr(exc))
                return
            with lock:
                versions = {k: list(v) for k, v in truth.items()}
            for q, h in zip(xq, hits):
                for hid, dist in zip(h.ids, h.distances):
                    # a hit's distance must be that of some version of that very id (it may have been
                    # replaced since the search ran); a mix-up of positions and ids breaks this
                    own = [abs(float(((v - q) ** 2).sum()) - float(dist)) for v in versions.get(hid, [])]
                    if not own or min(own) > 1e-3:
                        errors.append(f"id {hid} came back with distance {dist}, not one of its own")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]
    assert s.count("cc") == 3000 + 12 * 100
    assert s.collections.get("cc").ann.n_live == 4200
