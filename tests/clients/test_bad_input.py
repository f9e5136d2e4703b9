"""Bad input through the Client, on both transports (the `client` fixture): the same error class, a message naming
the problem, nothing written; and errors about one item of a batch name it in `err.item`."""
import io

import numpy as np
import pytest

from simdex import clients
from simdex.clients import Client


@pytest.fixture
def col(client):
    client.create_collection("c", dim=4)
    client.upsert("c", ["a", "b"], np.eye(4, dtype=np.float32)[:2], [{"x": 1}, {"x": 2}])
    return client


CASES = [
    ("wrong dimension", lambda c: c.upsert("c", ["z"], np.ones((1, 5), np.float32)), clients.InvalidArgument,
     "dimension 5"),
    ("NaN", lambda c: c.upsert("c", ["z"], np.array([[1, np.nan, 0, 0]], np.float32)), clients.InvalidArgument,
     "NaN"),
    ("inf query", lambda c: c.search("c", np.array([[np.inf, 0, 0, 0]], np.float32)), clients.InvalidArgument,
     "NaN or infinity"),
    ("empty batch", lambda c: c.upsert("c", [], np.zeros((0, 4), np.float32)), clients.InvalidArgument, "empty"),
    ("k=0", lambda c: c.search("c", np.ones((1, 4), np.float32), k=0), clients.InvalidArgument, "k must be"),
    ("unknown collection", lambda c: c.search("nope", np.ones((1, 4), np.float32)), clients.NotFound, "'nope'"),
    ("unknown id", lambda c: c.get("c", ["a", "ghost"]), clients.NotFound, "'ghost'"),
    ("duplicate collection", lambda c: c.create_collection("c", dim=4), clients.AlreadyExists, "'c'"),
    ("malformed filter", lambda c: c.search("c", np.ones((1, 4), np.float32), filter="{oops"),
     clients.InvalidArgument, "filter"),
    ("unknown operator", lambda c: c.count("c", {"x": {"$regex": "."}}), clients.InvalidArgument, "$regex"),
    ("bad metric", lambda c: c.create_collection("m", dim=4, metric="hamming"), clients.InvalidArgument, "hamming"),
    ("bad index", lambda c: c.create_collection("m", dim=4, index="IVFbogus"), clients.InvalidArgument,
     "IVFbogus"),
    ("bad name", lambda c: c.create_collection("no spaces", dim=4), clients.InvalidArgument, "name"),
    ("duplicate id in batch", lambda c: c.upsert("c", ["q", "q"], np.ones((2, 4), np.float32)),
     clients.InvalidArgument, "'q'"),
    ("metadata not an object", lambda c: c.upsert("c", ["q"], np.ones((1, 4), np.float32), ["[1]"]),
     clients.InvalidArgument, "metadata"),
]


@pytest.mark.parametrize("name,call,err,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status_and_nothing_changes(col, name, call, err, text):
    with pytest.raises(err) as exc:
        call(col)
    assert text in exc.value.message
    assert col.count("c") == 2
    assert [i.name for i in col.list_collections()] == ["c"]
    assert col.search("c", np.eye(4, dtype=np.float32)[:1], k=1).ids == [["a"]]


def test_a_local_client_is_a_client(tmp_path, remote):
    with Client.local(str(tmp_path / "data"), snapshot_interval=0) as c:
        assert isinstance(c, Client)
        assert c.in_process and c.embedder_pool is not None
        assert c.embedder_pool.get("densenet-bc-random").name == "densenet-bc-random"
    assert isinstance(remote, Client) and not remote.in_process and remote.embedder_pool is None


EMB = "densenet-bc-random"  # small and with random weights: nothing to download


def png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_bad_image_in_a_batch_is_named_by_err_item(client):
    client.create_collection("scans", 0, metric="cosine", embedder=EMB)
    images = [png(i) for i in range(6)]
    images[4] = images[4][:60]  # a truncated PNG
    with pytest.raises(clients.InvalidArgument) as upsert_err:
        client.upsert("scans", [f"i{i}" for i in range(6)], images=images)
    with pytest.raises(clients.InvalidArgument) as embed_err:
        client.embed(EMB, images=images)
    with pytest.raises(clients.InvalidArgument) as search_err:
        client.search("scans", images=images, k=1)
    assert upsert_err.value.item == embed_err.value.item == search_err.value.item == 4
    assert client.count("scans") == 0


def test_err_item_counts_from_the_start_of_a_batch_the_client_split(tmp_path):
    """Embed and raw search split a batch into messages; the server names the bad item within its message, the
    client from the start of the caller's batch."""
    from conftest import InProcessServer

    srv = InProcessServer(tmp_path / "s", max_message_mb=0.01)  # ~7.5 kB per message: a few images each
    try:
        with Client(srv.target, max_message_mb=0.01) as c:
            c.create_collection("scans", 0, metric="cosine", embedder=EMB)
            images = [png(i) for i in range(40)]
            assert sum(map(len, images)) > 4 * 7_500  # the batch travels in several messages
            images[33] = images[33][:60]
            with pytest.raises(clients.InvalidArgument) as embed_err:
                c.embed(EMB, images=images)
            with pytest.raises(clients.InvalidArgument) as search_err:
                c.search("scans", images=images, k=1)
            assert embed_err.value.item == search_err.value.item == 33
    finally:
        srv.stop()


def test_an_error_about_the_whole_request_names_no_item(client):
    with pytest.raises(clients.NotFound) as err:
        client.get_collection("nope")
    assert err.value.item is None
