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
from functools import partial
from typing import Any

import uvicorn

from compacs.security import Credentials, binding_problem
from compacs.web.api import App
from compacs.web.asgi import MAX_HEAD_BYTES, Limits, allowed_hosts, asgi_app
from compacs.web.protocol import HeaderTimeoutH11Protocol
from compacs.web.viewer import ViewerMissing, build_dir, study_url, viewer_app

log = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept
BACKLOG = 128
START_TIMEOUT = 30.0


class WebRefused(RuntimeError):
    """The web server must not start (binding without credentials, port taken)."""


def listening_socket(
    host: str, port: int, setting: str = "[http] port or --http-port"
) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; :class:`WebRefused` (naming the
    ``setting`` that chose the port) when it cannot."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise WebRefused(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            f"(choose another {setting}; 0 turns that server off)"
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
        setting: str = "[http] port or --http-port",
        name: str = "web",
    ) -> None:
        problem = binding_problem(host, port, credentials)
        if problem:
            raise WebRefused(problem)
        self.socket = listening_socket(host, port, setting)
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
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failure: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]  # socket's getsockname() is Any
        return host, port

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


def build(
    settings: Any, index: Any, store: Any, activity: Any, ingest: Any = None
) -> tuple[WebServer, WebServer | None]:
    """The node's web server from its settings (``[http]``) and the OHIF viewer's
    (``[viewer]``; None when off or when there is no build); not yet started. Both serve
    one :class:`App`, with the same credentials, Host allow-list and limits. ``ingest``
    (the node's :class:`compacs.ingest.Ingest`) stores what STOW-RS receives."""
    credentials = Credentials(settings.http_token, settings.http_user, settings.http_password)
    app = App(settings, index, store, activity, ingest)
    hosts = allowed_hosts(settings.http_host, settings.http_allowed_hosts)
    log.info("web: answering Host %s only ([http] allowed_hosts adds names)", ", ".join(hosts))
    limits = Limits(
        max_body=settings.http_max_body,
        max_stow_body=settings.http_max_stow_body,
        worker_threads=settings.http_worker_threads,
    )
    application = asgi_app(
        app, credentials, hosts=hosts, cors_origins=settings.http_cors_origins, limits=limits
    )
    web = WebServer(
        application,
        settings.http_host,
        settings.http_port,
        credentials,
        header_timeout=settings.http_header_timeout,
        send_timeout=settings.http_send_timeout,
        max_connections=settings.http_max_connections,
    )
    try:
        viewer = build_viewer(settings, app, credentials, hosts, limits)
    except BaseException:
        web.socket.close()
        raise
    if viewer is not None:
        app.viewer_link = partial(study_url, port=viewer.address[1])
    return web, viewer


def build_viewer(
    settings: Any, app: App, credentials: Credentials, hosts: list[str], limits: Limits
) -> WebServer | None:
    """The OHIF viewer's server on ``[viewer] port`` (:mod:`compacs.web.viewer`), or None
    (port 0; no build: one line in the log saying how to get one)."""
    if not settings.viewer_port:
        return None
    try:
        served = viewer_app(app, build_dir(settings), credentials, hosts, limits)
    except ViewerMissing as exc:
        log.warning("%s", exc)
        return None
    return WebServer(
        served.application,
        settings.http_host,
        settings.viewer_port,
        credentials,
        header_timeout=settings.http_header_timeout,
        send_timeout=settings.http_send_timeout,
        max_connections=settings.http_max_connections,
        setting="[viewer] port or --viewer-port",
        name="viewer",
    )
