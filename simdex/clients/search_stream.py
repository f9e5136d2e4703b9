"""Searches sent over SearchStream calls: one gRPC call carries many searches, one after the other.

A unary Search pays a whole call on both ends (its setup, its status, the server's hand-off of the call to a
worker thread); a message on an open stream pays none of that (measured with bare grpcio here: a round trip of
about 350 µs instead of 515-550 µs, half the server's CPU per message). The coalescer's slots
(simdex.clients.coalesce) each send through `SearchStreams.send`, which takes an idle stream or opens one, sends
one request, reads its answer and puts the stream back: one request in flight per stream, so answers need no ids.

An open stream holds one of the server's threads, so a stream nobody sent on for `idle_s` seconds is half-closed
(the server's handler then ends) and the next search opens a new one. `send` raises `StreamLost` when the stream
ended without answering (the server stopped, the connection broke, the server has no SearchStream, or all its
streams are open): the caller then makes the search as a Search call, which gRPC retries and balances; searches
store nothing, so sending one again is safe. Any other error is the request's own: Search would have refused it
with the same status.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import grpc

from simdex.convert import STREAMS_FULL

# Statuses of a stream that ended for reasons not of its request: the search goes as a Search call instead.
LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED)
PAUSE_S = 10.0  # no stream is opened for this long after the server refused one (full, or no SearchStream)


class StreamLost(Exception):
    """The stream ended without answering; nothing of the request was done that matters (searches store nothing)."""


class _Stream:
    """One SearchStream call: requests go through a queue that the call's request iterator reads."""

    def __init__(self, streams: "SearchStreams"):
        self.owner = streams
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.busy = True  # a sender is using it (changed under the owner's lock)
        self.closed = False
        self.last = time.monotonic()
        self.responses = streams.open(self._requests())

    def _requests(self):
        owner = self.owner
        while True:
            try:
                request = self.queue.get(timeout=owner.idle_s)
            except queue.Empty:
                with owner.lock:
                    if self.busy or time.monotonic() - self.last < owner.idle_s:
                        continue
                    self.closed = True
                    if self in owner.idle:
                        owner.idle.remove(self)
                return  # half-close: the server's handler ends, its thread is free
            if request is None:
                return
            yield request


class SearchStreams:
    """`send(request)` -> the SearchResponse of one SearchRequest, over an idle stream or a new one.

    `open(requests)` starts a SearchStream call on `requests` and returns its response iterator."""

    def __init__(self, open: Callable, idle_s: float):  # noqa: A002
        self.open = open
        self.idle_s = idle_s
        self.lock = threading.Lock()
        self.idle: list[_Stream] = []
        self._paused_until = 0.0
        self.opened = 0  # streams opened so far (the tests read it)

    def usable(self) -> bool:
        return time.monotonic() >= self._paused_until

    def send(self, request):
        stream = None
        with self.lock:
            while self.idle and stream is None:
                s = self.idle.pop()
                if not s.closed:
                    stream, s.busy = s, True
        if stream is None:
            stream = _Stream(self)
            self.opened += 1
        stream.queue.put(request)
        try:
            response = next(stream.responses)
        except StopIteration:  # the server ended it with OK before answering: it is stopping
            self._drop(stream)
            raise StreamLost("the server ended the stream (it is stopping)") from None
        except grpc.RpcError as exc:
            self._drop(stream)
            trailing = dict(exc.trailing_metadata() or ())
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED or STREAMS_FULL in trailing:
                self._paused_until = time.monotonic() + PAUSE_S
                raise StreamLost(exc.details()) from None
            if exc.code() in LOST:
                raise StreamLost(exc.details()) from None
            raise
        with self.lock:
            stream.busy, stream.last = False, time.monotonic()
            self.idle.append(stream)
        return response

    def _drop(self, stream: _Stream) -> None:
        with self.lock:
            stream.closed = True
        stream.queue.put(None)

    def close(self) -> None:
        """Half-close every idle stream (streams in use end with their channel)."""
        with self.lock:
            idle, self.idle = self.idle, []
            for s in idle:
                s.closed = True
        for s in idle:
            s.queue.put(None)
