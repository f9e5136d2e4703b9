"""The one place domain errors become gRPC statuses: SimdexError -> its code, its message, and `simdex-item`
trailing metadata naming the input at fault (simdex.convert.error_metadata); anything else -> INTERNAL."""
from __future__ import annotations

import functools
import logging

import grpc

from simdex.convert import error_metadata
from simdex.errors import SimdexError

LOG = logging.getLogger(__name__)


def grpc_errors(method):
    """Decorate a servicer method: SimdexError -> its status; anything else -> INTERNAL, logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except SimdexError as exc:
            trailing = error_metadata(exc)
            if trailing:
                context.set_trailing_metadata(trailing)
            context.abort(grpc.StatusCode[exc.code], exc.message)
        except Exception:  # noqa: BLE001 - the server must keep serving; the log has the stack
            LOG.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    return wrapper
