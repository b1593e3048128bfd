"""gRPC side of bearer-token authentication: a server interceptor around :class:`TokenAuth`.

A call without ``authorization: Bearer <token>`` metadata is answered
UNAUTHENTICATED before its request is even parsed; health checks pass without a
token unless ``--auth-health`` is set.

Example::

    server = grpc.server(pool, interceptors=[TokenInterceptor(TokenAuth(["s3cret-token-0123456"]))])
"""

from __future__ import annotations

import logging

import grpc

from histoedge.serving.auth import TokenAuth
from histoedge.serving.untrusted import client_text

log = logging.getLogger(__name__)

_MESSAGE = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"


def _deny(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if self.auth.exempt(method):
            return continuation(handler_call_details)
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value
                break
        if self.auth.allows(authorization):
            return continuation(handler_call_details)
        log.warning("refused %s: %s", client_text(method), "no bearer token" if authorization is None
                    else "wrong bearer token")
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        # Same kind of handler as the real one, reading raw bytes (nothing is parsed).
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_deny)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_deny)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_deny)
        return grpc.stream_stream_rpc_method_handler(_deny)
