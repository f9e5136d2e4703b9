import numpy as np

from conftest import oracle


def test_flat_search_equals_numpy_oracle(client):
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((500, 12)).astype(np.float32)
    xq = rng.standard_normal((20, 12)).astype(np.float32)
    names = [f"v{i}" for i in range(len(xb))]
    client.create_collection("c", dim=12, metric="l2", index="Flat")
    client.upsert("c", ids=names, vectors=xb)
    r = client.search("c", xq, k=7)
    D, I = oracle(xb, xq, 7)
    assert r.ids == [[names[j] for j in row] for row in I]
    np.testing.assert_allclose(r.distances, D, rtol=1e-4, atol=1e-4)
