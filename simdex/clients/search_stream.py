"""Searches sent over SearchStream calls: one gRPC call carries many searches, one after the other.

A unary Search pays a whole call on both ends (its setup, its status, the server's hand-off of the call to a
worker thread); a message on an open stream pays none of that (measured with bare grpcio here: a round trip of
about 350 µs instead of 515-550 µs, half the server's CPU per message). The coalescer's slots
(simdex.clients.coalesce) each send through `SearchStreams.send`, which takes an idle stream or opens one, sends
one request, reads its answer and puts the stream back: one request in flight per stream, so answers need no ids.

An open stream holds one of the server's threads, so a stream nobody sent on for `idle_s` seconds is half-closed
(the server's handler then ends) and the next search opens a new one; at most `max_open` (the slots) are open at
once, and one is closed after its answer once MAX_AGE_S old, so that round_robin spreads its successor over the
servers of a list. `send` raises `StreamLost` when no stream answered for reasons not of the request: the server
stopping (it ends or cancels its streams), a stream that had answered before lost with its connection, no stream
free, a server without SearchStream or with all its streams open (then none is tried for PAUSE_S). The caller
then makes the search as a Search call, which gRPC retries and balances; searches store nothing, so sending one
again is safe. Any other error is the request's own (Search would have refused it with the same status), or, for
a new stream's first request, what gRPC's retries of it ended with.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import grpc

from simdex.convert import STREAMS_FULL

# Statuses of a stream that ended for reasons not of its request: once it has answered before, the search goes as
# a Search call instead (a new stream's first request was retried by gRPC already, as a Search call is).
LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
PAUSE_S = 10.0  # no stream is opened for this long after the server refused one (full, or no SearchStream)
MAX_AGE_S = 10.0  # a stream is closed after its answer once this old, so that round_robin spreads the new one


class StreamLost(Exception):
    """No stream answered; nothing of the request was done that matters (searches store nothing)."""


class _Stream:
    """One SearchStream call: requests go through a queue that the call's request iterator reads."""

    def __init__(self, streams: "SearchStreams"):
        self.owner = streams
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.busy = True  # a sender is using it (changed under the owner's lock)
        self.closed = False
        self.answered = 0
        self.born = self.last = time.monotonic()
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
                    owner.retire(self)
                return  # half-close: the server's handler ends, its thread is free
            if request is None:
                return
            yield request


class SearchStreams:
    """`send(request)` -> the SearchResponse of one SearchRequest, over an idle stream or a new one; at most
    `max_open` streams at once (the coalescer's slots): a sender finding none free is told StreamLost.

    `open(requests)` starts a SearchStream call on `requests` and returns its response iterator."""

    def __init__(self, open: Callable, idle_s: float, max_open: int):  # noqa: A002
        self.open = open
        self.idle_s = idle_s
        self.max_open = max_open
        self.lock = threading.Lock()
        self.idle: list[_Stream] = []  # oldest first: taken in turn, so each stays warm and round_robin spreads them
        self.live = 0  # streams open (idle or busy)
        self.opened = 0  # streams opened so far, and the most open at once (the tests read them)
        self.peak = 0
        self.shut = False
        self._paused_until = 0.0

    def usable(self) -> bool:
        return not self.shut and time.monotonic() >= self._paused_until

    def send(self, request):
        stream = self._take()
        stream.queue.put(request)
        try:
            response = next(stream.responses)
        except StopIteration:  # the server ended it with OK before answering: it is stopping
            self._end(stream)
            raise StreamLost("the server ended the stream (it is stopping)") from None
        except grpc.RpcError as exc:
            self._end(stream)
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED or STREAMS_FULL in dict(exc.trailing_metadata() or ()):
                self._paused_until = time.monotonic() + PAUSE_S
                raise StreamLost(exc.details()) from None
            if exc.code() in LOST and stream.answered and not self.shut:  # not when the Client itself was closed
                raise StreamLost(exc.details()) from None
            raise
        except BaseException:  # interrupted while waiting: the stream's answer would go to the next sender
            self._end(stream)
            raise
        with self.lock:
            stream.answered += 1
            stream.busy, stream.last = False, time.monotonic()
            keep = stream.last - stream.born < MAX_AGE_S and not self.shut
            if keep:
                self.idle.append(stream)
        if not keep:
            self._end(stream)
        return response

    def _take(self) -> _Stream:
        with self.lock:
            while self.idle:
                s = self.idle.pop(0)
                if s.responses.done():  # it ended while idle (the server cut it): its end is nobody's answer
                    self.retire(s)
                    continue
                s.busy = True
                return s
            if self.live >= self.max_open:
                raise StreamLost("every stream of this client is in use")
            self.live += 1
            self.opened += 1
            self.peak = max(self.peak, self.live)
        try:
            return _Stream(self)
        except BaseException:
            with self.lock:
                self.live -= 1
            raise

    def retire(self, stream: _Stream) -> None:
        """Under the lock: `stream` is no longer used (ended, or half-closed by its request iterator)."""
        if not stream.closed:
            stream.closed = True
            self.live -= 1
            if stream in self.idle:
                self.idle.remove(stream)

    def _end(self, stream: _Stream) -> None:
        with self.lock:
            self.retire(stream)
        stream.queue.put(None)

    def close(self) -> None:
        """Half-close every idle stream (streams in use end with their channel)."""
        with self.lock:
            self.shut = True
            idle = list(self.idle)
        for s in idle:
            self._end(s)
