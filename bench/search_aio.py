"""A grpc.aio prototype of simdex's Search, for bench/search.py only (simdex/server stays on the thread pool).

Run by bench/search.py as a subprocess (`search_aio.py N D CHUNK`): it fills its own in-process `Simdex` with the
bench's seeded data when asked (a Load call, JSON {"index": desc, "name": collection}), then serves GetCollection
and Search with simdex's own servicer code on an asyncio event loop, on two ports:
- "inline": the handler runs SimdexServicer.Search in the event loop's thread (no hand-off; FAISS blocks the loop);
- "executor": the handler awaits the same call in a thread pool of one thread per core (a hand-off per call).
It prints "aio listening on 127.0.0.1:PORT" (the Load port; Load answers JSON {"inline": port, "executor":
port}) and serves until its stdin closes.
"""
from __future__ import annotations

from simdex.defaults import quiet_openmp

quiet_openmp()

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

from search_setup import LOAD, make_data, ncpu, N_QUERIES  # noqa: E402
from simdex.proto import simdex_pb2_grpc as pb_grpc  # noqa: E402
from simdex.server.servicer import SimdexServicer  # noqa: E402
from simdex.service.facade import Simdex  # noqa: E402

MB = 64 * 1024 * 1024


class AioSimdex(pb_grpc.SimdexServicer):
    """GetCollection and Search of SimdexServicer behind coroutine handlers (the rest stays unimplemented)."""

    def __init__(self, servicer: SimdexServicer, pool: futures.ThreadPoolExecutor | None):
        self.servicer, self.pool = servicer, pool

    async def GetCollection(self, request, context):
        return self.servicer.GetCollection(request, context)

    async def Search(self, request, context):
        if self.pool is None:
            return self.servicer.Search(request, context)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.servicer.Search, request, context)


async def main(n: int, d: int, chunk: int) -> None:
    logging.basicConfig(level=logging.INFO)  # SIMDEX_TRACE=1: the per-stage summaries, as `simdex serve` logs them
    xb, _ = make_data(n, d, N_QUERIES)
    service = Simdex(tempfile.mkdtemp(prefix="simdex-aio-"), snapshot_interval=0)
    servicer = SimdexServicer(service, MB)

    ports: list[int] = []

    def load(request: bytes, context) -> bytes:
        spec = json.loads(request)
        service.create_collection(spec["name"], d, "l2", spec["index"])
        ids = [f"v{i}" for i in range(n)]
        for i in range(0, n, chunk):
            service.upsert(spec["name"], ids[i:i + chunk], xb[i:i + chunk],
                           [{"g": j % 10} for j in range(i, min(n, i + chunk))])
        return json.dumps({"inline": ports[0], "executor": ports[1]}).encode()

    servers = []
    for pool in (None, futures.ThreadPoolExecutor(max_workers=ncpu())):
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MB),
                                          ("grpc.max_send_message_length", MB), ("grpc.so_reuseport", 0)])
        pb_grpc.add_SimdexServicer_to_server(AioSimdex(servicer, pool), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        servers.append(server)
    loader = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # Load runs off the event loop
    loader.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        LOAD.split("/")[1], {"Load": grpc.unary_unary_rpc_method_handler(load)}),))
    load_port = loader.add_insecure_port("127.0.0.1:0")
    loader.start()
    for server in servers:
        await server.start()
    print(f"aio listening on 127.0.0.1:{load_port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for server in servers:
        await server.stop(None)
    loader.stop(None)
    service.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
