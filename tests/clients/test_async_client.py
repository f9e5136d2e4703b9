"""AsyncClient on its own terms: concurrent calls on one channel, cancellation and deadlines (nothing stored), and
the same errors as Client. Its congruence with Client runs in every test that takes the `client` fixture."""
from __future__ import annotations

import asyncio
import inspect
import threading

import numpy as np
import pytest
from conftest import InProcessServer, clustered, oracle

from simdex.clients import AsyncClient, Client, DeadlineExceeded, InvalidArgument, NotFound, SimdexError
from simdex.clients.client import ClientBase

D = 16


@pytest.fixture
def srv(tmp_path):
    s = InProcessServer(tmp_path / "srv")
    yield s
    s.stop()


def with_client(target: str, body, **kwargs):
    """Run `await body(client)` on a fresh event loop, with an AsyncClient made inside it."""
    async def main():
        async with AsyncClient(target, **kwargs) as c:
            return await body(c)

    return asyncio.run(main())


class AnnouncingLock:
    """A collection's write lock that tells the test when a write is waiting for it and when the write left it."""

    def __init__(self):
        self.lock, self.waiting, self.left = threading.Lock(), threading.Event(), threading.Event()

    def __enter__(self):
        self.waiting.set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        self.left.set()


def held_write_lock(srv, name: str) -> AnnouncingLock:
    """Swap collection `name`'s write lock for an AnnouncingLock that the test holds: writes wait before commit."""
    gate = AnnouncingLock()
    gate.lock.acquire()
    srv.service.collections.get(name).write_lock = gate
    return gate


def test_every_client_method_is_one_plan_for_both_clients():
    public = {n for n in dir(Client) if not n.startswith("_") and inspect.isfunction(getattr(Client, n))}
    assert len(public) > 20, public
    for name in sorted(public - {"close"}):
        assert hasattr(getattr(ClientBase, name), "plan"), f"{name} is not a plan of ClientBase"
        assert getattr(AsyncClient, name) is getattr(Client, name), name
    assert inspect.iscoroutinefunction(AsyncClient.close)


def test_methods_return_awaitables_and_nothing_runs_until_awaited(srv):
    async def body(c):
        pending = c.create_collection("a", D)
        assert inspect.iscoroutine(pending)
        assert await c.list_collections() == []  # not created yet: nothing ran
        info = await pending
        return info, [x.name for x in await c.list_collections()]

    info, names = with_client(srv.target, body)
    assert (info.name, info.dim) == ("a", D) and names == ["a"]


def test_gathered_searches_match_the_exact_oracle(srv):
    xb, xq = clustered(2000, D, seed=1), clustered(64, D, seed=2)
    names = [f"v{i}" for i in range(len(xb))]
    _, true_idx = oracle(xb, xq, 10)

    async def body(c):
        await c.create_collection("v", D)
        await c.upsert("v", names, xb)
        return await asyncio.gather(*(c.search("v", q, k=10) for q in xq))

    results = with_client(srv.target, body)
    assert [r.ids[0] for r in results] == [[names[j] for j in t] for t in true_idx]


def test_gathered_upserts_of_disjoint_ids_all_commit(srv):
    xb = clustered(800, D, seed=3)

    async def body(c):
        await c.create_collection("v", D)
        counts = await asyncio.gather(*(c.upsert("v", [f"p{p}-{i}" for i in range(100)], xb[p * 100:(p + 1) * 100])
                                        for p in range(8)))
        got = await c.get("v", ["p5-7", "p0-0"])
        return counts, await c.count("v"), got

    counts, total, got = with_client(srv.target, body)
    assert counts == [100] * 8 and total == 800
    np.testing.assert_array_equal(np.stack([g.vector for g in got]), xb[[507, 0]])


def test_large_calls_are_split_into_messages_under_the_limit(srv):
    xb, xq = clustered(3000, 32, seed=4), clustered(400, 32, seed=5)
    names = [f"v{i}" for i in range(len(xb))]
    _, true_idx = oracle(xb, xq, 5)

    async def body(c):  # 3000 x 32 float32 is 384 kB: several upsert messages, several search calls
        await c.create_collection("v", 32)
        await c.upsert("v", names, xb, metadata=[{"i": i} for i in range(len(xb))])
        return await c.search("v", xq, k=5, include_metadata=True), await c.get("v", names)

    res, items = with_client(srv.target, body, max_message_mb=0.05)
    assert res.ids == [[names[j] for j in t] for t in true_idx]
    assert [m[0]["i"] for m in res.metadata] == true_idx[:, 0].tolist()
    assert [it.id for it in items] == names


def test_a_cancelled_upsert_raises_cancelled_error_and_stores_nothing(srv):
    with Client(srv.target) as c:
        c.create_collection("v", D)
    gate = held_write_lock(srv, "v")

    async def body(c):
        task = asyncio.create_task(c.upsert("v", ["a", "b"], np.ones((2, D), np.float32)))
        assert await asyncio.to_thread(gate.waiting.wait, 30), "the upsert never reached the commit"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # the server learns of the cancellation (RST_STREAM on loopback)
        gate.lock.release()
        assert await asyncio.to_thread(gate.left.wait, 30)
        return await c.count("v")  # the channel still serves calls after a cancellation

    assert with_client(srv.target, body) == 0


def test_a_passed_deadline_is_deadline_exceeded_and_stores_nothing(srv):
    with Client(srv.target) as c:
        c.create_collection("v", D)
    gate = held_write_lock(srv, "v")

    async def body(c):
        with pytest.raises(DeadlineExceeded):
            await c.upsert("v", ["a"], np.ones((1, D), np.float32))
        gate.lock.release()
        assert await asyncio.to_thread(gate.left.wait, 30)

    with_client(srv.target, body, timeout=1.0)
    with Client(srv.target) as c:
        assert c.count("v") == 0


BAD_CALLS = [
    ("get_collection", ("nope",), {}),
    ("create_collection", ("bad name!", D), {}),
    ("upsert", ("v", ["a", "b"], np.array([[1.0] * D, [np.nan] * D], np.float32)), {}),
    ("upsert", ("v", ["a"], np.ones((1, D + 1), np.float32)), {}),
    ("search", ("v", np.ones((1, D), np.float32)), {"k": 0}),
    ("search", ("v", np.ones((1, D), np.float32)), {"filter": {"f": {"$regex": "x"}}}),
    ("delete", ("v", ["missing"]), {}),
    ("get", ("v", []), {}),
]


def _failure(call):
    try:
        call()
    except SimdexError as exc:
        return type(exc), exc.message, exc.item
    raise AssertionError("no error")


def test_errors_are_the_same_classes_messages_and_items_as_clients(srv):
    with Client(srv.target) as c:
        c.create_collection("v", D)
        expected = [_failure(lambda: getattr(c, m)(*a, **kw)) for m, a, kw in BAD_CALLS]

    async def body(ac):
        out = []
        for m, a, kw in BAD_CALLS:
            try:
                await getattr(ac, m)(*a, **kw)
                out.append(None)
            except SimdexError as exc:
                out.append((type(exc), exc.message, exc.item))
        return out

    assert with_client(srv.target, body) == expected
    assert {t for t, _, _ in expected} == {NotFound, InvalidArgument}
    assert any(item == 1 for _, _, item in expected)  # the NaN row of the batch


def test_backup_streams_the_same_copy_as_clients(srv, tmp_path):
    xb = clustered(300, D, seed=6)
    with Client(srv.target) as c:
        c.create_collection("v", D)
        c.upsert("v", [f"v{i}" for i in range(len(xb))], xb, metadata=[{"i": i} for i in range(len(xb))])
        expected = c.backup(tmp_path / "sync")

    async def body(ac):
        return await ac.backup(tmp_path / "async")

    manifest = with_client(srv.target, body)
    assert manifest["collections"] == expected["collections"]
    files = sorted(p.relative_to(tmp_path / "sync") for p in (tmp_path / "sync").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "async")
                                     for p in (tmp_path / "async").rglob("*") if p.is_file())
