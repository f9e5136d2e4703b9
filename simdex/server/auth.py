"""Bearer-token authentication as a server interceptor (health checks stay open for probes)."""
from __future__ import annotations

import hmac

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/",)


def _deny(kind_handler, handler, message: str):
    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return kind_handler(abort, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, token: str):
        if not token:
            raise ValueError("empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return handler
        message = "missing bearer token" if not given else "invalid bearer token"
        if handler.request_streaming and handler.response_streaming:
            return _deny(grpc.stream_stream_rpc_method_handler, handler, message)
        if handler.request_streaming:
            return _deny(grpc.stream_unary_rpc_method_handler, handler, message)
        if handler.response_streaming:
            return _deny(grpc.unary_stream_rpc_method_handler, handler, message)
        return _deny(grpc.unary_unary_rpc_method_handler, handler, message)
