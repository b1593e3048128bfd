"""Bearer-token authentication, shared by every transport (gRPC metadata, HTTP headers).

A client sends ``authorization: Bearer <token>``.  The server holds one or more
tokens (a file with one token a line allows rotation: add the new token, move
the clients, remove the old one; or ``HISTOEDGE_AUTH_TOKEN``).  Every known
token is compared in constant time (:func:`hmac.compare_digest`), all of them
every time, so the answer time does not tell how much of a guess was right.

Tokens authenticate *a client of this server*, nothing finer; they travel in the
clear unless TLS is on (see SECURITY.md).

Example::

    auth = TokenAuth.from_settings(settings)          # None when no token is configured
    if auth is not None and not auth.allows(headers.get("authorization")):
        ...  # answer UNAUTHENTICATED / 401
"""

from __future__ import annotations

import hmac
from pathlib import Path

from histoedge import HistoedgeError

SCHEME = "bearer"
MIN_TOKEN_LENGTH = 16
# Health checks: the gRPC health service, and the Open Inference Protocol's REST health paths.
HEALTH_PREFIXES = ("/grpc.health.v1.Health/", "/v2/health/")


class TokenAuth:
    """The tokens a server accepts.

    Args:
        tokens: accepted tokens (each at least 16 characters).
        exempt_health: let health checks through without a token (probes rarely send one).
    """

    def __init__(self, tokens: list[str], exempt_health: bool = True) -> None:
        tokens = [token for token in tokens if token]
        if not tokens:
            raise HistoedgeError("no authentication token given (the token file is empty?)")
        short = [token for token in tokens if len(token) < MIN_TOKEN_LENGTH or token.strip() != token]
        if short:
            raise HistoedgeError(f"authentication tokens must be at least {MIN_TOKEN_LENGTH} characters "
                                 "without spaces (e.g. `openssl rand -hex 32`)")
        self._tokens = [token.encode("utf-8") for token in tokens]
        self.exempt_health = exempt_health

    @classmethod
    def from_settings(cls, settings) -> "TokenAuth | None":
        """The settings' token(s), or None when authentication is off."""
        if settings.auth_token_file is not None:
            return cls(read_token_file(settings.auth_token_file), exempt_health=not settings.auth_health)
        if settings.auth_token is not None:
            return cls([settings.auth_token.strip()], exempt_health=not settings.auth_health)
        return None

    def allows(self, authorization: str | bytes | None) -> bool:
        """True if ``authorization`` is ``Bearer <a known token>``."""
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != SCHEME:
            return False
        offered = token.strip().encode("utf-8", errors="replace")
        allowed = False
        for known in self._tokens:  # no early exit: the time does not depend on which one matched
            allowed |= hmac.compare_digest(offered, known)
        return allowed

    def exempt(self, method: str) -> bool:
        """True if the RPC or HTTP path ``method`` needs no token.

        Health checks (``/grpc.health.v1.Health/Check``, ``/v2/health/ready``) are exempt
        unless the server was started with ``--auth-health``.
        """
        path = "/" + method.lstrip("/")
        return self.exempt_health and path.startswith(HEALTH_PREFIXES)


def asgi_token_required(app, auth: TokenAuth):
    """Wrap an ASGI application so HTTP requests need the bearer token (health paths as :meth:`TokenAuth.exempt`)."""
    async def guarded(scope, receive, send):
        if scope["type"] == "http" and not auth.exempt(scope.get("path", "")):
            authorization = next((value for key, value in scope.get("headers", ()) if key == b"authorization"), None)
            if not auth.allows(authorization):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="histoedge"')]})
                await send({"type": "http.response.body",
                            "body": b'{"error": "missing or wrong bearer token", "outcome": "unauthenticated"}'})
                return
        await app(scope, receive, send)
    return guarded


def read_token_file(path: Path) -> list[str]:
    """Tokens in ``path``: one a line; blank lines and lines starting with '#' are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise HistoedgeError(f"cannot read the token file {path}: {error}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
