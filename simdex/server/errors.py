"""The one place domain errors become gRPC statuses: SimdexError -> its code, its message, and `simdex-item`
trailing metadata naming the input at fault (simdex.convert.error_metadata); anything else -> INTERNAL.

A call that ended under the servicer's feet (the client cancelled it or went away, its deadline passed, the server
stopped) is logged as that, at INFO, never as an internal error: gRPC's request iterator raises a bare RpcError
then, and nobody reads the status sent back.
"""
from __future__ import annotations

import functools
import logging

import grpc

from simdex.convert import error_metadata
from simdex.errors import SimdexError

LOG = logging.getLogger(__name__)
# Statuses that say the call itself ended, not that its input or the server is at fault.
CALL_ENDED = ("CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE")


def grpc_errors(method):
    """Decorate a servicer method: SimdexError -> its status; anything else -> INTERNAL, logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the server must keep serving
            abort(context, exc, method.__name__)

    return wrapper


def abort(context, exc: Exception, method: str) -> None:
    """End the call with `exc`'s status: a SimdexError's code, message and item; a request stream's RpcError (the
    call was cancelled, simdex.server.calls) as CANCELLED; anything else INTERNAL, its stack logged."""
    if isinstance(exc, SimdexError):
        if exc.code in CALL_ENDED:
            LOG.info("%s ended: %s", method, exc.message)
        trailing = error_metadata(exc)
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(grpc.StatusCode[exc.code], exc.message)
    if isinstance(exc, grpc.RpcError):
        LOG.info("%s ended: the call was cancelled; nothing of it was stored", method)
        context.abort(grpc.StatusCode.CANCELLED, f"{method}: the call was cancelled")
    LOG.error("internal error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
