"""One Client's concurrent single-query searches go out stacked in few Search RPCs (simdex.clients.coalesce); each
caller gets exactly the answer its query gets alone, and an error only its own."""
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import clustered, oracle
from simdex.clients import Client
from simdex.errors import InvalidArgument, Unavailable

D = 16


class _Refused(grpc.RpcError):
    status = grpc.StatusCode.INVALID_ARGUMENT

    def code(self):
        return self.status

    def details(self):
        return "queries: this one is refused"

    def trailing_metadata(self):
        return ()


def _watch(client: Client, refuse_value: float | None = None, pause: float = 0.004):
    """Count the rows of each search the client sends (over its SearchStreams, or a Search RPC); each pauses first
    (so concurrent searches queue behind it); one holding a row whose first value is `refuse_value` fails
    INVALID_ARGUMENT."""
    rows, transport = [], client._transport
    assert transport._streams is not None, "a Client sends its stacked searches over SearchStream"

    def watch(send):
        def watched(request, **kw):
            rows.append(request.queries.shape[0])
            time.sleep(pause)
            q = np.frombuffer(request.queries.data, np.float32).reshape(list(request.queries.shape))
            if refuse_value is not None and (q[:, 0] == refuse_value).any():
                raise _Refused()
            return send(request, **kw)
        return watched

    transport._streams.send = watch(transport._streams.send)
    transport.stub.Search = watch(transport.stub.Search)
    return rows


def _concurrently(fn, jobs: list, threads: int = 8) -> dict:
    out, errors = {}, {}

    def worker(j):
        for i in range(j, len(jobs), threads):
            try:
                out[i] = fn(jobs[i])
            except Exception as exc:  # noqa: BLE001 - each job's error is checked by the test
                errors[i] = exc

    ts = [threading.Thread(target=worker, args=(j,)) for j in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return out | errors


@pytest.mark.parametrize("index", ["HNSW16", "Flat"])
def test_concurrent_searches_are_stacked_and_each_gets_the_answer_of_its_query_alone(server, index):
    xb = clustered(3000, D, seed=4)
    xq = clustered(96, D, seed=5)
    names = [f"v{i}" for i in range(len(xb))]
    with Client(server.target, search_slots=0) as alone, Client(server.target, search_slots=1) as shared:
        alone.create_collection("c", D, "l2", index)
        alone.upsert("c", names, xb, metadata=[{"g": i % 3} for i in range(len(xb))])
        # mixed k and filters: only searches with equal ones share a call
        jobs = [(xq[i:i + 1], 5 + 5 * (i % 2), {"g": 1} if i % 3 == 0 else None) for i in range(len(xq))]
        expect = [alone.search("c", q, k, filter=f) for q, k, f in jobs]
        rows = _watch(shared)
        got = _concurrently(lambda job: shared.search("c", job[0], job[1], filter=job[2]), jobs)
    assert sum(rows) == len(jobs) and max(rows) > 1, f"no search was stacked: {rows}"
    assert len(rows) < 0.75 * len(jobs), f"few searches were stacked: {len(rows)} calls for {len(jobs)}"
    for i, (q, k, f) in enumerate(jobs):
        assert got[i].ids == expect[i].ids, i
        np.testing.assert_allclose(got[i].distances, expect[i].distances, rtol=1e-5, atol=1e-5)
    if index == "Flat":  # exact: the oracle agrees too, for the unfiltered ones
        plain = [i for i, (_, k, f) in enumerate(jobs) if f is None and k == 10]
        _, idx = oracle(xb, xq[plain], 10)
        assert [got[i].ids[0] for i in plain] == [[names[j] for j in row] for row in idx]


def test_an_error_of_a_stacked_call_reaches_only_the_caller_whose_query_caused_it(server):
    xb = clustered(500, D, seed=6)
    xq = clustered(40, D, seed=7)
    xq[13, 0] = 7.25  # the server refuses any call holding this query
    with Client(server.target, search_slots=1) as c:
        c.create_collection("c", D, "l2", "Flat")
        c.upsert("c", [f"v{i}" for i in range(len(xb))], xb)
        rows = _watch(c, refuse_value=7.25)
        got = _concurrently(lambda q: c.search("c", q[None], 3), list(xq))
    assert max(rows) > 1, rows
    assert isinstance(got[13], InvalidArgument) and "refused" in str(got[13])
    _, idx = oracle(xb, xq, 3)
    for i in range(len(xq)):
        if i != 13:
            assert got[i].ids == [[f"v{j}" for j in idx[i]]], i


def test_what_is_never_stacked(server):
    """Range searches, pages, metadata, larger batches and an asyncio client go out as they were asked."""
    xb = clustered(300, D, seed=8)
    with Client(server.target, search_slots=1) as c:
        c.create_collection("c", D, "l2", "Flat")
        c.upsert("c", [f"v{i}" for i in range(len(xb))], xb, metadata=[{"i": i} for i in range(len(xb))])
        calls = []
        c._transport._coalescer.search = lambda *a: calls.append(a)  # would record a stacked search
        c.search("c", xb[:1], 2, radius=0.5)
        c.search("c", xb[:1], 2, include_metadata=True)
        c.search("c", xb[:10], 2)
        assert calls == []
    with Client(server.target, search_slots=0) as c:
        assert c._transport._coalescer is None


def test_the_asyncio_client_has_no_coalescer(server):
    import asyncio

    from simdex.clients import AsyncClient

    async def main():
        async with AsyncClient(server.target) as c:
            return c._transport._coalescer

    assert asyncio.run(main()) is None


def test_the_default_slots_are_two_per_server_of_the_target():
    from simdex.clients import targets

    assert targets.servers(targets.parse("127.0.0.1:1")) == 1
    assert targets.servers(targets.parse(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])) == 3
    assert targets.servers(targets.parse("dns:///localhost:1")) == 1
    with Client(["127.0.0.1:1", "127.0.0.1:2"]) as c:
        assert c._transport._coalescer._combiner._free == 4


def test_an_error_of_the_whole_stacked_call_reaches_its_callers_without_repeats(server, monkeypatch):
    """UNAVAILABLE (after gRPC's own retries), a deadline or a missing collection belong to the call, not to one
    query: each caller gets the error once, and nothing is sent again alone."""
    monkeypatch.setattr(_Refused, "status", grpc.StatusCode.UNAVAILABLE)
    xb = clustered(200, D, seed=9)
    xq = clustered(24, D, seed=10)
    xq[:, 0] = 7.25  # every call is refused
    with Client(server.target, search_slots=1) as c:
        c.create_collection("c", D, "l2", "Flat")
        c.upsert("c", [f"v{i}" for i in range(len(xb))], xb)
        rows = _watch(c, refuse_value=7.25)
        got = _concurrently(lambda q: c.search("c", q[None], 3), list(xq))
    assert all(isinstance(got[i], Unavailable) for i in range(len(xq)))
    assert max(rows) > 1 and sum(rows) == len(xq), f"searches were repeated alone: {rows}"


def test_the_asyncio_client_refuses_search_slots(server):
    import asyncio

    from simdex.clients import AsyncClient

    async def main():
        AsyncClient(server.target, search_slots=2)

    with pytest.raises(InvalidArgument, match="search_slots"):
        asyncio.run(main())
