"""`AsyncClient`: the simdex SDK for asyncio, over grpc.aio.

The same methods as `Client` (simdex.clients.client.ClientBase: one body each, a plan of transport calls), each
awaitable, with the same argument checks, message splitting, errors and paging. Calls of one AsyncClient may run
concurrently (`asyncio.gather`); cancelling a task cancels the RPC it is waiting on.
"""
from __future__ import annotations

from simdex.clients.async_remote import AsyncRemoteTransport
from simdex.clients.client import ClientBase
from simdex.clients.plans import Plan, run_async


class AsyncClient(ClientBase):
    """An asyncio connection to a simdex server: `async with AsyncClient("host:port") as c:
    await c.search(...)`. Make it inside the event loop that uses it."""

    remote = AsyncRemoteTransport

    def _run(self, steps: Plan):
        return run_async(steps, self._transport)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
