"""uvicorn's HTTP/1.1 protocol with a deadline for the request head (slowloris).

uvicorn (0.55, ``protocols/http/h11_impl.py``) closes an idle keep-alive connection after
``timeout_keep_alive``, but any byte received cancels that timer, and nothing bounds the time
a client may take to complete its request line and headers: a connection that sends half a
request line and stops is held until the client goes away. This subclass arms one timer
whenever the connection waits for a request head (on connect and after each response) and
cancels it only when h11 has parsed the complete head; a client that has not finished by then
is disconnected. It costs no thread: the connection is a coroutine-free asyncio protocol.
RFC 9112 9.5 lets a server close an idle or slow connection at any time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeoutH11Protocol(H11Protocol):
    """:class:`H11Protocol` that closes connections whose request head is not complete within
    ``config.header_timeout`` seconds (set by :func:`compacs.web.server.uvicorn_config`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout: float = getattr(self.config, "header_timeout", 10.0)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the peer erred)
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # waiting for the next request head on keep-alive

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timed_out(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("web: request head not complete within %s s: closing", self.header_timeout)
            self.transport.close()
