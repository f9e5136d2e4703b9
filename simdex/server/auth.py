"""Bearer-token authentication and per-collection access as a server interceptor (health checks stay open for
probes). Which token a call carries and what it allows is simdex.server.tokens; this module applies it to calls:
UNAUTHENTICATED without a known token, PERMISSION_DENIED naming the collection, listings cut to what the token
covers. `--token-file` is one admin token of the same mechanism (Tokens.single)."""
from __future__ import annotations

import logging
from typing import Callable

import grpc

from simdex.errors import SimdexError
from simdex.server.handlers import OPEN_METHODS, method_name, refusal, rewrap
from simdex.server.tokens import Rule, Token, Tokens, rule_for

LOG = logging.getLogger(__name__)


class TokenAuth(grpc.ServerInterceptor):
    """`head_collection(name)` gives the collection a head was trained on (it raises a SimdexError for an unknown
    or malformed name, which the servicer then reports itself)."""

    def __init__(self, tokens: Tokens, head_collection: Callable[[str], str]):
        self.tokens, self.head_collection = tokens, head_collection

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        token = self.tokens.find(given)
        if token is None:
            return refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                           "missing bearer token" if not given else "invalid bearer token")
        rule, (_, method) = rule_for(details.method), method_name(details.method)
        if rule.server_wide:
            if token.server_wide_admin:
                return handler
            message = token.server_wide_denial(method)
            _log_refusal(token, method, message)
            return refusal(handler, grpc.StatusCode.PERMISSION_DENIED, message)
        if rule.access is None:
            return handler
        if handler.request_streaming and rule.each:
            return rewrap(handler, lambda behaviour: self._checked_each(behaviour, token, rule, method))
        if handler.request_streaming:
            return rewrap(handler, lambda behaviour: self._checked_stream(behaviour, token, rule, method))
        return rewrap(handler, lambda behaviour: self._checked(behaviour, token, rule, method))

    def _checked(self, behaviour, token: Token, rule: Rule, method: str):
        def call(request, context):
            self._check(token, rule, method, request, context)
            return _listed(token, rule, behaviour(request, context))

        return call

    def _checked_stream(self, behaviour, token: Token, rule: Rule, method: str):
        """A client stream names its collection in its first message (later ones must name the same one: the
        stream reader refuses others); the servicer reads that first message from the stream again."""

        def call(requests, context):
            try:
                first = next(requests, None)
            except grpc.RpcError:
                context.abort(grpc.StatusCode.CANCELLED, f"{method}: the call was cancelled")
            if first is None:  # an empty stream names nothing: the servicer refuses it
                return _listed(token, rule, behaviour(requests, context))
            self._check(token, rule, method, first, context)
            return _listed(token, rule, behaviour(_Replayed(first, requests), context))

        return call

    def _checked_each(self, behaviour, token: Token, rule: Rule, method: str):
        """A stream of requests each judged as it is read: a denied one ends the stream with PERMISSION_DENIED
        (the answers before it stand)."""

        def judged(requests, context):
            for request in requests:
                self._check(token, rule, method, request, context)
                yield request

        return lambda requests, context: behaviour(judged(requests, context), context)

    def _check(self, token: Token, rule: Rule, method: str, request, context) -> None:
        """Abort with PERMISSION_DENIED unless `token` has the rule's access to every collection `request` names."""
        for name in filter(None, (getattr(request, f) for f in rule.fields)):
            if not token.allows(rule.access, name):
                self._abort(context, token, method, token.denial(method, rule.access, name))
        head = getattr(request, rule.head) if rule.head else ""
        if head:
            try:
                collection = self.head_collection(head)
            except SimdexError:  # unknown or malformed: the servicer answers NOT_FOUND or INVALID_ARGUMENT
                return
            if not token.allows(rule.access, collection):
                self._abort(context, token, method, token.denial(method, rule.access, collection, head))

    @staticmethod
    def _abort(context, token: Token, method: str, message: str) -> None:
        _log_refusal(token, method, message)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, message)


def _log_refusal(token: Token, method: str, message: str) -> None:
    LOG.info("%s refused to token %r: %s", method, token.name, message)  # the name, never the secret


def _listed(token: Token, rule: Rule, response):
    """`response` without the listed entries whose collection `token` does not cover at the rule's access."""
    if rule.listing is None or response is None:
        return response
    field, key = rule.listing
    kept = [e for e in getattr(response, field) if token.allows(rule.access, getattr(e, key))]
    out = type(response)()
    out.CopyFrom(response)
    del getattr(out, field)[:]
    getattr(out, field).extend(kept)
    return out


class _Replayed:
    """A request stream whose first message was read already: that message, then every read goes to the stream
    itself (also the reads after its end, which simdex.server.calls.client_stream relies on to see a cancel)."""

    def __init__(self, first, rest):
        self._first, self._rest = first, rest

    def __iter__(self):
        return self

    def __next__(self):
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return next(self._rest)
