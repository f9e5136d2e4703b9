"""The grpc.aio transport of `AsyncClient`: RemoteTransport's methods (one RPC each, messages by `simdex.convert`),
each returning an awaitable, over the same targets, service config and retries. Only the channel (grpc.aio), the
call, the pause between repeated writes, close and the Backup stream differ."""
from __future__ import annotations

import asyncio

import grpc

from simdex.clients import targets
from simdex.clients.backup_files import receive
from simdex.clients.remote import RemoteTransport, next_pause, status_error
from simdex.errors import Unavailable
from simdex.proto import simdex_pb2 as pb


class AsyncRemoteTransport(RemoteTransport):
    """A grpc.aio channel to a simdex server; make it inside the event loop that uses it. Errors arrive as the
    SimdexError of their status, `item` restored; a cancelled task cancels its RPC."""

    channels = grpc.aio
    coalesces = False

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method, request, read=None):
        try:
            answer = await method(request, timeout=self.timeout, metadata=self._md)
        except grpc.RpcError as exc:
            raise status_error(exc) from None
        return read(answer) if read else None

    async def _retried(self, attempt, refusal):
        """RemoteTransport._retried, awaiting each attempt and pause."""
        pauses = targets.retry_pauses()
        while True:
            try:
                return await attempt()
            except Unavailable as exc:
                pause = next_pause(exc, refusal, pauses)
            await asyncio.sleep(pause)

    async def backup(self, out):
        """The Backup RPC's stream written to the new folder `out` by clients.backup_files, in a worker thread
        (file writes and fsyncs stay off the event loop) that reads each message from the loop."""
        call = self.stub.Backup(pb.BackupRequest(), timeout=self.timeout, metadata=self._md)
        loop = asyncio.get_running_loop()

        def pieces():
            while (c := asyncio.run_coroutine_threadsafe(call.read(), loop).result()) is not grpc.aio.EOF:
                yield c.path, c.data

        try:
            return await asyncio.to_thread(receive, pieces, out)
        except grpc.RpcError as exc:
            raise status_error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream ended; else (the task cancelled) the writer's next read fails
