"""Whether a call may still commit: the end of a client stream told apart from its cancellation, and the gate that
a graceful stop closes before it cancels the calls still in flight.

gRPC's server-side request iterator does not always raise when a call is cancelled: the pending read completes
empty, exactly as when the client half-closes, and the iterator just ends if it learns of the cancellation only
afterwards. A servicer that then commits what it received stores part of a stream nobody will acknowledge. So a
write asks the gate right before its commit, under the lock the commit takes (`simdex.service.collection`): the
call must still be active, before its deadline, and the server not past its grace period.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import grpc

from simdex import defaults
from simdex.errors import DeadlineExceeded, SimdexError, Unavailable
from simdex.server.handlers import OPEN_METHODS, method_name, refusal

LOG = logging.getLogger(__name__)
REFUSE_BEFORE_STOP_S = 0.3


class Cancelled(SimdexError):
    """The client cancelled the call (or went away): nothing of it was committed, and nobody reads the answer."""

    code = "CANCELLED"


def check_alive(context, what: str) -> None:
    """Raise unless the call can still be answered: Cancelled, or DeadlineExceeded once its deadline passed."""
    if not context.is_active():
        raise Cancelled(f"{what}: the call was cancelled; nothing of it was stored")
    if context.time_remaining() <= 0:
        raise DeadlineExceeded(f"{what}: the call's deadline passed before the commit; nothing of it was stored")


def client_stream(messages, context, what: str):
    """The messages of a client stream, ending only on the client's half-close: a cancellation (gRPC raises
    RpcError, or the iterator ends early) or a passed deadline raises Cancelled / DeadlineExceeded."""
    try:
        yield from messages
        # An empty read completes the same way on a half-close and on a cancellation; the cancellation's own
        # event is queued with it. One more read goes through the completion queue after that event, so that
        # is_active() below has seen it (a half-closed stream answers this read at once, empty again).
        next(messages, None)
    except grpc.RpcError:
        raise Cancelled(f"{what}: the call was cancelled mid-stream; nothing of it was stored") from None
    check_alive(context, what)


class CommitGate:
    """Admits the commits of live calls until `close()`, and lets close() wait for the commits it admitted.

    `guard(context, what)` is the commit guard a servicer installs for a write (see
    `simdex.service.collection.commit_guard`): a context manager entered right before the commit, under the
    collection's write lock, that raises instead when the call is gone or the gate is closed.

    It also watches the long-lived streams waiting for their next request (`next_request`): a stop ends them
    (`drain`), and one that waited `stream_idle_s` seconds (0: no limit) is cancelled, so that peers which open
    streams and send nothing cannot hold every stream place while their connection lives."""

    def __init__(self, stream_idle_s: float = defaults.SERVER_STREAM_IDLE_S, clock=time.monotonic):
        if not 0 <= stream_idle_s < float("inf"):
            raise ValueError(f"stream_idle_s must be a finite number of seconds >= 0 (0: no limit), got {stream_idle_s}")
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # commits admitted and finished
        self._tick = threading.Condition(lock)  # the idle-stream reaper's wake-ups (a drain), not every commit's
        self._closed = False
        self._active = 0
        self.draining = False  # the stop has begun: streams of searches end
        self.stream_idle_s = stream_idle_s
        self._clock = clock
        self._waiting: dict = {}  # context of a stream waiting for its next request -> when it began to wait
        self._reaper: threading.Thread | None = None

    def drain(self) -> None:
        """The server is stopping: calls in flight may finish, but long-lived streams end now: those waiting for
        a request are cancelled (nothing of theirs is in flight), the others end after their answer."""
        with self._cond:
            self.draining = True
            waiting = list(self._waiting)
            self._tick.notify_all()
        for context in waiting:
            context.cancel()

    def next_request(self, requests, context):
        """The next message of a long-lived request stream, or None when it ended or the server is draining (a
        drain cancels the read). Raises grpc.RpcError when the call was cancelled (by its peer, a drain, or
        because it waited `stream_idle_s` or longer; a request read as that cut came is dropped: None)."""
        reaper = None
        with self._cond:
            if self.draining:
                return None
            self._waiting[context] = self._clock()
            if self.stream_idle_s and self._reaper is None:
                self._reaper = reaper = threading.Thread(target=self._reap, name="simdex-idle-streams", daemon=True)
        try:
            if reaper is not None:  # started outside the lock, which commits take
                self._start(reaper)
            request = next(requests, None)
        finally:
            with self._cond:
                mine = self._waiting.pop(context, None) is not None
        return request if mine else None  # not mine: cut_idle took it and cancelled the call, nobody reads an answer

    def _start(self, reaper: threading.Thread) -> None:
        try:
            reaper.start()
        except BaseException:
            with self._cond:
                self._reaper = None
            raise

    def cut_idle(self) -> int:
        """Cancel the streams that have waited `stream_idle_s` or longer for their next request; how many."""
        if not self.stream_idle_s:
            return 0
        with self._cond:
            oldest = self._clock() - self.stream_idle_s
            idle = [c for c, since in self._waiting.items() if since <= oldest]
            for context in idle:  # a cancelled read ends its wait now; it is not cut twice
                del self._waiting[context]
        for context in idle:
            context.cancel()
        if idle:
            LOG.info("cancelled %d search stream(s) idle for %.3g s or more", len(idle), self.stream_idle_s)
        return len(idle)

    def _reap(self) -> None:
        """Cut idle streams every quarter of the limit (50 ms to 1 s apart) while any stream waits; a stream that
        waits later starts it again."""
        step = max(0.05, min(1.0, self.stream_idle_s / 4))
        while True:
            with self._cond:
                self._tick.wait(step)
                if self.draining or not self._waiting:
                    self._reaper = None
                    return
            self.cut_idle()

    def guard(self, context, what: str):
        @contextmanager
        def window():
            with self._cond:
                if self._closed:
                    raise Unavailable(f"{what}: the server is shutting down; nothing of this call was stored, "
                                      "retry it on the restarted server")
                check_alive(context, what)
                self._active += 1
            try:
                yield
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

        return window

    def close(self, timeout: float = 60.0) -> int:
        """Admit no commit from now on; wait (up to `timeout` s) for those in progress. Returns how many there
        were when it closed."""
        with self._cond:
            self._closed = True
            busy = self._active
            deadline = time.monotonic() + timeout
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            if self._active:
                LOG.warning("%d commits still running %.0f s after the stop's grace period", self._active, timeout)
        return busy


class RefuseWhileStopping(grpc.ServerInterceptor):
    """Once a stop has begun (`gate.draining`), every new call but a health check is answered UNAVAILABLE with a
    message, before gRPC's own shutdown: a call that reaches the server while gRPC shuts down may instead be cut
    as plain CANCELLED (accepted, not yet given to a handler), which clients do not retry."""

    def __init__(self, gate: CommitGate):
        self.gate = gate

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not self.gate.draining or details.method.startswith(OPEN_METHODS):
            return handler
        _, method = method_name(details.method)
        return refusal(handler, grpc.StatusCode.UNAVAILABLE,
                       f"{method}: the server is shutting down; nothing of this call was stored: retry it on another "
                       "server or once this one is back")


def graceful_stop(server, gate: CommitGate, grace: float) -> None:
    """Stop `server`: refuse new calls at once (UNAVAILABLE, RefuseWhileStopping; REFUSE_BEFORE_STOP_S before
    gRPC's own shutdown, so that calls already sent are refused with a message), let those in flight finish for
    `grace` seconds, then close the gate (no commit starts after this, the commits in progress end) and cancel every
    call still open."""
    gate.drain()
    time.sleep(REFUSE_BEFORE_STOP_S)
    drained = server.stop(grace=grace + 3600)  # starts the drain; the hard stop below comes first
    if drained.wait(grace):
        gate.close()
        return
    busy = gate.close()
    if busy:  # their answers are on their way: a moment to send them before the calls are cut
        drained.wait(1.0)
    LOG.info("grace period of %.1f s over: cancelling the calls still open (nothing of them is stored)", grace)
    server.stop(grace=None).wait()
