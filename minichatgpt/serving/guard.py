"""The guard in front of the API: who may call it and how much they may send, checked before any work.

A pure ASGI middleware, independent of the routes and of the generation engine behind them. Each HTTP
request passes, in order:

1. **Host** must name this server (default: the loopback names ``localhost``, ``127.0.0.1``, ``[::1]``,
   with any port), else 421. A page on ``evil.example`` whose DNS answer is switched to 127.0.0.1 (DNS
   rebinding) is same-origin with its own name, but its requests still say ``Host: evil.example``.
2. **API key** on ``/v1`` routes when one is set: ``Authorization: Bearer <key>``, compared in constant
   time, else 401 with ``WWW-Authenticate: Bearer``.
3. **Content-Type** of a POST must be ``application/json``, else 415. HTML forms cannot send that type
   across origins without a CORS preflight, which fails while CORS is off.
4. **Body size**: a ``Content-Length`` over the limit is answered 413 before a byte of the body is read;
   a chunked body is counted as it arrives and refused (413) as soon as it goes over.

CORS is off (no ``Access-Control-*`` headers; browsers block cross-origin reads and preflights fail)
unless origins are configured. A client that hangs up is logged in one line, not as a traceback.
"""

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .protocol import APIError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
API_KEY_ENV = "MINICHATGPT_API_KEY"
MAX_BODY_BYTES = 8 * 2 ** 20
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9._-]+?)\.?(:[0-9]{1,5})?$")

log = logging.getLogger("minichatgpt.serving")


@dataclass(frozen=True)
class GuardConfig:
    """What the guard enforces.

    Attributes:
        api_key: the Bearer token every ``/v1`` request must carry; None leaves the API open.
        allowed_hosts: names the ``Host`` header may carry (a port is always allowed); ``"*"`` allows any.
        cors_origins: origins allowed to call the API from a browser (``"*"`` for any); empty: CORS off.
        max_body_bytes: the largest request body.
    """

    api_key: Optional[str] = None
    allowed_hosts: Tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: Tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES


def host_allowed(host: Optional[str], allowed: Tuple[str, ...]) -> bool:
    """Whether a ``Host`` header value names one of ``allowed`` (any port; a trailing dot is ignored)."""
    if "*" in allowed:
        return True
    match = _HOST.match((host or "").strip().lower())
    return bool(match) and match.group(1) in {name.lower() for name in allowed}


def key_matches(authorization: Optional[str], api_key: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <key>`` header."""
    scheme, _, token = (authorization or "").partition(" ")  # header text was decoded as latin-1: back to bytes
    return hmac.compare_digest(token.strip().encode("latin-1"), api_key.encode()) and scheme.lower() == "bearer"


class RequestGuard:
    """ASGI middleware applying a :class:`GuardConfig` (see the module docstring for the order)."""

    def __init__(self, app, config: GuardConfig):
        self.app, self.config = app, config

    def check(self, scope) -> Optional[APIError]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not host_allowed(headers.get("host"), self.config.allowed_hosts):
            return APIError(421, f"the Host header {headers.get('host')!r} is not a name of this server; "
                                 f"start it with --allowed_hosts to add one", code="host_not_allowed")
        if self.config.api_key and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS" \
                and not key_matches(headers.get("authorization"), self.config.api_key):
            return APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                            code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="minichatgpt"'})
        if scope["method"] == "POST":
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return APIError(415, f"the body must be JSON (Content-Type: application/json), not "
                                     f"{media_type or 'untyped'}", code="unsupported_media_type")
            length = headers.get("content-length")
            if length is not None and not length.isdigit():
                return APIError(400, "the Content-Length header is not a number", code="invalid_request")
            if length is not None and int(length) > self.config.max_body_bytes:
                return self.too_large()
        return None

    def too_large(self) -> APIError:
        return APIError(413, f"the request body is over {self.config.max_body_bytes} bytes",
                        code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = self.check(scope)
        if error is not None:
            return await error.response()(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.config.max_body_bytes:
                raise self.too_large()  # inside the route: answered by the app's APIError handler
            return message

        try:
            await self.app(scope, counted_receive, send)
        except (ClientDisconnect, ConnectionError) as error:
            log.info("client disconnected: %s %s (%s)", scope["method"], scope["path"], type(error).__name__)


def install_guard(app: FastAPI, config: GuardConfig) -> None:
    """Put the guard (and CORS, when origins are given) in front of ``app``'s routes."""
    app.add_middleware(RequestGuard, config=config)
    if config.cors_origins:  # outside the guard: preflights are answered here, errors still get CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
