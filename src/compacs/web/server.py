"""The HTTP server of the web API and pages, in a thread beside the DICOM server.

The standard library's ThreadingHTTPServer: the API is read-only, a few routes, JSON and
PNG out; a framework (Starlette + uvicorn) would add an event loop and two dependencies
to run a dozen synchronous handlers that all block on SQLite or a codec anyway.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from compacs.web.api import App, Response, json_response
from compacs.web.auth import REALM, Credentials, binding_problem

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}


class WebRefused(RuntimeError):
    """The web server must not start (binding without credentials, port taken)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


class WebServer:
    def __init__(self, app: App, host: str, port: int, credentials: Credentials) -> None:
        problem = binding_problem(host, port, credentials)
        if problem:
            raise WebRefused(problem)
        handler = _handler(app, credentials)
        try:
            self.httpd = _Server((host, port), handler)
        except OSError as exc:
            raise WebRefused(
                f"[http] cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(choose another [http] port or --http-port; 0 turns the web server off)"
            ) from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(app: App, credentials: Credentials) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "compacs"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            if not credentials.admits(self.headers.get("Authorization")):
                response = json_response({"error": "authentication required"}, 401)
                response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            else:
                try:
                    params = parse_qsl(url.query, keep_blank_values=True)
                    response = app.handle(method, url.path, params)
                except Exception:
                    log.exception("web: %s %s failed", method, url.path)
                    response = json_response({"error": f"internal error on {url.path}"}, 500)
            self._send(response, method == "HEAD")

        def _send(self, response: Response, head_only: bool) -> None:
            self.send_response(response.status)
            headers: dict[str, Any] = {
                "Content-Type": response.content_type,
                "Content-Length": str(len(response.body)),
                "Cache-Control": "no-store",
                **SECURITY_HEADERS,
                **response.headers,
            }
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if not head_only:
                self.wfile.write(response.body)

        def log_message(self, format: str, *args: object) -> None:  # no URLs (PHI) in logs
            pass

    return Handler


def build(settings: Any, index: Any, store: Any, activity: Any) -> WebServer:
    """The node's web server from its settings (``[http]``); not yet started."""
    credentials = Credentials(settings.http_token, settings.http_user, settings.http_password)
    app = App(settings, index, store, activity)
    return WebServer(app, settings.http_host, settings.http_port, credentials)
