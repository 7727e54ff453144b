"""The Starlette application in front of :class:`compacs.web.api.App`.

Layers, outermost first: security headers on every answer (the framework's own 400/405
included); the Host allow-list (DNS rebinding, RFC 9110 7.2); the head and body limits;
CORS only when origins are configured; authentication; then the route, whose synchronous
handler runs in a bounded thread pool. The path and query are decoded strictly: a request
whose URL is not valid percent-encoded UTF-8 (RFC 3986 2.1, 2.5) is a 400, never a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compacs.security import Credentials
from compacs.web import dicomweb, pages
from compacs.web.api import App, Response, json_response
from compacs.web.auth import CHALLENGE
from compacs.web.urls import BadUrl, decode_component, query_params

log = logging.getLogger(__name__)
T = TypeVar("T")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
METHODS = ["GET", "HEAD"]  # read-only but for STOW-RS's POST; anything else: 405 with Allow
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; also h11's max incomplete event size
MAX_TARGET_BYTES = 8 * 1024  # the path and query


@dataclass(frozen=True)
class Limits:
    """What one request may cost (``[http]``)."""

    max_body: int = 1 << 20
    max_stow_body: int = 1 << 30
    worker_threads: int = 8

    def larger_body(self, scope: Scope) -> tuple[int, str] | None:
        """The body limit of a request allowed more than ``max_body`` and the setting that
        says so: a STOW-RS POST (PS3.18 10.5) up to ``max_stow_body``; else None."""
        if scope.get("method") == "POST" and dicomweb.is_store(scope.get("path", "")):
            return self.max_stow_body, "[http] max_stow_body"
        return None


def allowed_hosts(host: str, extra: Iterable[str]) -> list[str]:
    """The Host header values answered: loopback names, the listening host, and ``extra``."""
    listening = f"[{host.strip('[]')}]" if ":" in host else host
    names = [*LOOPBACK_NAMES, listening, *extra]
    return list(dict.fromkeys(name.lower() for name in names if name not in ("0.0.0.0", "[::]")))


def _to_starlette(response: Response) -> StarletteResponse:
    headers = {"Cache-Control": "no-store", **response.headers}
    return StarletteResponse(
        response.body, response.status, headers=headers, media_type=response.content_type
    )


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (with ``headers`` replacing some, e.g. the viewer's
    CSP) and ``Cache-Control: no-store`` (unless the route set its own) to every answer,
    including the 400s and 405s of the framework."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = {**SECURITY_HEADERS, **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cache-Control", "no-store")
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str = "[http] max_body") -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes ({setting})")


def head_problem(scope: Scope) -> HTTPException | None:
    """414 for a request target over MAX_TARGET_BYTES (RFC 9110 15.5.15), 431 for a head
    over MAX_HEAD_BYTES (RFC 6585 5), else None."""
    target = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
    if target > MAX_TARGET_BYTES:
        return HTTPException(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
    fields = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    if target + fields > MAX_HEAD_BYTES:
        return HTTPException(431, f"request line and headers larger than {MAX_HEAD_BYTES} bytes")
    return None


class HeadLimit:
    """Refuses an oversized request target or head (:func:`head_problem`): h11 bounds only a
    head still incomplete, not one that arrived in one read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = head_problem(scope) if scope["type"] == "http" else None
        if problem is not None:
            await _error_response(scope, problem, close=True)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies beyond ``max_body`` bytes (or what ``larger(scope)`` allows that
    request: the limit and the setting naming it): by the declared Content-Length before the
    app runs, and by counting while the app reads a body of unknown length, so nothing past
    the limit is ever buffered. A body the app leaves unread closes the connection after the
    answer (RFC 9112 9.6), so it is never read as a request."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        larger: Callable[[Scope], tuple[int, str] | None] = lambda scope: None,
    ) -> None:
        self.app, self.max_body, self.larger = app, max_body, larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit, setting = self.larger(scope) or (self.max_body, "[http] max_body")
        declared = headers.get("content-length")
        if declared is not None and int(declared) > limit:  # h11 checked it is a number
            await _error_response(scope, BodyTooLarge(limit, setting), close=True)(
                scope, receive, send
            )
            return
        state = {"read": 0, "done": declared in (None, "0") and "transfer-encoding" not in headers}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    raise BodyTooLarge(limit, setting)
                state["done"] = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["done"]:
                MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        await self.app(scope, counting_receive, closing_send)


def _error_response(scope: Scope, exc: HTTPException, close: bool = False) -> StarletteResponse:
    """A JSON error under /api/ and /dicom-web/, an HTML page elsewhere (as
    :meth:`App._error`)."""
    path = scope.get("path", "")
    if path.startswith(("/api/", f"{dicomweb.ROOT}/", "/wado")):
        response = _to_starlette(json_response({"error": exc.detail}, exc.status_code))
    else:
        body = pages.error(exc.status_code, str(exc.detail)).encode()
        response = StarletteResponse(body, exc.status_code, media_type="text/html; charset=utf-8")
    for name, value in (exc.headers or {}).items():  # e.g. Allow on a 405
        response.headers[name] = value
    if close:
        response.headers["Connection"] = "close"
    return response


class Endpoint:
    """Every URL: authentication, strict URL decoding, then :meth:`App.handle` in a thread."""

    def __init__(self, app: App, credentials: Credentials, threads: int) -> None:
        self.app, self.credentials, self.threads = app, credentials, threads
        self.limiter: anyio.CapacityLimiter | None = None  # made in the event loop's thread

    async def serve(self, request: Request) -> StarletteResponse:
        if not self.credentials.admits(request.headers.get("authorization")):
            response = json_response({"error": "authentication required"}, 401)
            response.headers["WWW-Authenticate"] = CHALLENGE
            return _to_starlette(response)
        raw_path = request.scope.get("raw_path") or b"/"
        try:
            decode_component(raw_path, "path")  # App.handle decodes the segments it matched
            params = query_params(request.scope.get("query_string", b""))
        except BadUrl as exc:
            raise HTTPException(400, str(exc)) from None
        host = request.headers.get("host")
        path = raw_path.decode("ascii")
        response = await self.run(self._handle, request.method, path, params, host)
        return _to_starlette(response)

    async def run(self, handler: Callable[..., T], *args: Any) -> T:
        """``handler(*args)`` in the bounded pool of handler threads (every route's)."""
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(handler, *args, limiter=self.limiter)

    def _handle(
        self, method: str, path: str, params: list[tuple[str, str]], host: str | None
    ) -> Response:
        try:
            return self.app.handle(method, path, params, host)
        except Exception:
            log.exception("web: %s request failed", method)  # no URL: it may carry PHI
            return json_response({"error": "internal error"}, 500)


async def http_exception(request: Request, exc: Exception) -> StarletteResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        detail = (
            f"{request.method} is not supported here (Allow: {allow})"
            if "POST" in allow  # STOW-RS's resources (PS3.18 10.5)
            else f"{request.method} is not supported: the API is read-only"
        )
        exc = HTTPException(405, detail, headers=exc.headers)
    return _error_response(request.scope, exc)


def asgi_app(
    app: App,
    credentials: Credentials,
    *,
    hosts: list[str],
    cors_origins: Iterable[str] = (),
    limits: Limits = Limits(),
) -> Starlette:
    """The ASGI application serving ``app``'s routes (see the module docstring)."""
    endpoint = Endpoint(app, credentials, limits.worker_threads)
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False),
        Middleware(HeadLimit),
        Middleware(BodyLimit, max_body=limits.max_body, larger=limits.larger_body),
    ]
    origins = list(cors_origins)
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "HEAD", "POST"],  # POST: STOW-RS only
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    routes = [
        dicomweb.mount(app, credentials, endpoint.run),  # before the catch-all
        dicomweb.uri_service(app, credentials, endpoint.run),
        Route("/{path:path}", endpoint.serve, methods=METHODS),
    ]
    handlers: dict[Any, Any] = {HTTPException: http_exception}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
