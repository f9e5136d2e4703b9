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
        except SimdexError as exc:
            if exc.code in CALL_ENDED:
                LOG.info("%s ended: %s", method.__name__, exc.message)
            trailing = error_metadata(exc)
            if trailing:
                context.set_trailing_metadata(trailing)
            context.abort(grpc.StatusCode[exc.code], exc.message)
        except grpc.RpcError:  # the request stream raised: the call was cancelled (simdex.server.calls)
            LOG.info("%s ended: the call was cancelled; nothing of it was stored", method.__name__)
            context.abort(grpc.StatusCode.CANCELLED, f"{method.__name__}: the call was cancelled")
        except Exception:  # noqa: BLE001 - the server must keep serving; the log has the stack
            LOG.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    return wrapper
