"""uvicorn's HTTP/1.1 protocol with a deadline for the request head (slowloris) and for a
stalled send.

uvicorn (0.55, ``protocols/http/h11_impl.py``) closes an idle keep-alive connection after
``timeout_keep_alive``, but any byte received cancels that timer, and nothing bounds the time
a client may take to complete its request line and headers: a connection that sends half a
request line and stops is held until the client goes away. This subclass arms one timer
whenever the connection waits for a request head (on connect and after each response) and
cancels it only when h11 has parsed the complete head; a client that has not finished by then
is disconnected. It costs no thread: the connection is a coroutine-free asyncio protocol.
RFC 9112 9.5 lets a server close an idle or slow connection at any time.

A client that stops reading a response (e.g. a large WADO-RS series) fills the socket and
the transport's buffer; uvicorn then pauses the application's ``send`` until the buffer
drains (``FlowControl.drain``), with no deadline: the connection, its buffered part and the
paused answer were held as long as the client kept the socket open. A second timer is armed
whenever the transport pauses writing and cancelled when it resumes; a send stalled for
``config.send_timeout`` seconds (``[http] send_timeout``) resets the connection: abort, not
close (which waits for the unread buffer to drain), and with SO_LINGER 0, since the
kernel would otherwise keep the orphaned socket, its unsent data and its FIN queued behind a
zero window (RFC 9293 3.10.4: a reset for an abort). uvicorn then marks the cycle
disconnected and the streaming answer is cancelled.

Each accepted connection gets TCP_NODELAY here. asyncio sets it itself only on sockets whose
``proto`` is IPPROTO_TCP (CPython ``asyncio.base_events._set_nodelay``), and the listening
socket comes from ``socket.create_server`` (``compacs.web.server.listening_socket``), whose
``proto`` is 0, as are the sockets it accepts: Nagle's algorithm then held the body of every
answer, written after its head, until the client's delayed ACK came, ~40 ms later (every
QIDO-RS search, every frame OHIF fetches).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeoutH11Protocol(H11Protocol):
    """:class:`H11Protocol` that closes connections whose request head is not complete within
    ``config.header_timeout`` seconds, and aborts those whose response could not be written
    for ``config.send_timeout`` seconds (both set by :class:`compacs.web.server.WebServer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout: float = getattr(self.config, "header_timeout", 10.0)
        self.header_timer: asyncio.TimerHandle | None = None
        self.send_timeout: float = getattr(self.config, "send_timeout", 60.0)
        self.send_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timer is None:
            self.send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()

    def _cancel_send_timer(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    def _send_timed_out(self) -> None:
        self.send_timer = None
        log.info("web: the client read nothing for %s s: connection reset", self.send_timeout)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    # asyncio.Protocol takes a BaseTransport; a stream server hands a Transport
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        self._cancel_send_timer()
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
