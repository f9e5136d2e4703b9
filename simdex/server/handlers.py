"""gRPC method handlers rebuilt around a new behaviour, for the interceptors (auth, tokens, metrics): one place
that knows the four kinds of handler (unary or streaming request, unary or streaming response)."""
from __future__ import annotations

from typing import Callable

import grpc

_KINDS = {  # (request_streaming, response_streaming) -> the handler's behaviour attribute, its constructor
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


# Health checks answer whatever the interceptors would refuse (no token, a stop under way): probes read them.
OPEN_METHODS = ("/grpc.health.v1.Health/",)


def method_name(full: str) -> tuple[str, str]:
    """"/simdex.v1.Simdex/Search" -> ("simdex.v1.Simdex", "Search")."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers as `handler` whose behaviour is `wrap(behaviour)`."""
    attr, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(wrap(getattr(handler, attr)), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that answers every call with `code` and `message`, reading nothing."""

    def refuse(_request, context):
        context.abort(code, message)

    return rewrap(handler, lambda _behaviour: refuse)
