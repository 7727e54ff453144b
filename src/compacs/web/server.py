"""The HTTP server of the web API and pages: uvicorn in a thread beside the DICOM server.

Starlette (``compacs.web.asgi``) in front of the framework-independent :class:`App`, served by
uvicorn, whose h11 parser refuses request smuggling (duplicate or conflicting Content-Length,
RFC 9112 6.3) and bounds the request head; one event loop holds every connection without a
thread each, with keep-alive and request-head timeouts (``compacs.web.protocol``) and a
bounded number of connections and handler threads. The socket is bound here, before any
thread starts, so a taken port is a :class:`WebRefused` and ``address`` is the real port.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from compacs.web.api import App
from compacs.web.asgi import MAX_HEAD_BYTES, Limits, allowed_hosts, asgi_app
from compacs.web.auth import Credentials, binding_problem
from compacs.web.protocol import HeaderTimeoutH11Protocol

log = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept
BACKLOG = 128
START_TIMEOUT = 30.0


class WebRefused(RuntimeError):
    """The web server must not start (binding without credentials, port taken)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; :class:`WebRefused` when it cannot."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise WebRefused(
            f"[http] cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(choose another [http] port or --http-port; 0 turns the web server off)"
        ) from None


class _ThreadServer(uvicorn.Server):
    """uvicorn.Server run in a thread: the node process owns the signals."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 calls this
        pass


class WebServer:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        header_timeout: float = 10.0,
        send_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        problem = binding_problem(host, port, credentials)
        if problem:
            raise WebRefused(problem)
        self.socket = listening_socket(host, port)
        config = uvicorn.Config(
            app,
            http=HeaderTimeoutH11Protocol,
            lifespan="off",
            log_config=None,
            access_log=False,  # URLs carry patient names and IDs
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            timeout_graceful_shutdown=5,
            limit_concurrency=max_connections,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            backlog=BACKLOG,
            headers=[("Server", "compacs")],
        )
        config.header_timeout = header_timeout  # type: ignore[attr-defined]  # read by the protocol
        config.send_timeout = send_timeout  # type: ignore[attr-defined]  # read by the protocol
        self.server = _ThreadServer(config)
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)
        self.failure: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]  # type: ignore[return-value]

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # reported by start()
            self.failure = exc
            log.exception("web: the HTTP server stopped")

    def start(self) -> None:
        """Serve in a thread; return once uvicorn accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise WebRefused(f"[http] the web server did not start: {self.failure}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)
        self.socket.close()


def build(settings: Any, index: Any, store: Any, activity: Any) -> WebServer:
    """The node's web server from its settings (``[http]``); not yet started."""
    credentials = Credentials(settings.http_token, settings.http_user, settings.http_password)
    app = App(settings, index, store, activity)
    hosts = allowed_hosts(settings.http_host, settings.http_allowed_hosts)
    log.info("web: answering Host %s only ([http] allowed_hosts adds names)", ", ".join(hosts))
    limits = Limits(max_body=settings.http_max_body, worker_threads=settings.http_worker_threads)
    application = asgi_app(
        app, credentials, hosts=hosts, cors_origins=settings.http_cors_origins, limits=limits
    )
    return WebServer(
        application,
        settings.http_host,
        settings.http_port,
        credentials,
        header_timeout=settings.http_header_timeout,
        send_timeout=settings.http_send_timeout,
        max_connections=settings.http_max_connections,
    )
