"""What a peer that stops talking may hold: bounded in time, count and PDU size.

pynetdicom reads and writes accepted sockets in blocking mode with no timeout, so a peer
that sends part of a PDU and goes silent held its association thread, and its slot of
``max_associations``, for good: 32 connections that sent 16 bytes of an A-ASSOCIATE-RQ
locked every modality out (C-ECHO refused for 150 s and more), and the stuck threads spun
(pynetdicom's ``kill()`` waits in a 1 ms loop for a DUL thread blocked in ``recv``). A
P-DATA-TF declaring 4 GiB was read into memory as it came, whatever maximum PDU length
compacs had announced. Here, per connection:

- every read and write is bounded: the ACSE timeout until the association is established,
  then the network timeout (a PDU stalled half-way, a C-GET requestor that stops reading);
- an association not established within the ACSE timeout is shut down by a reaper, even
  if its peer trickles a byte at a time (PS3.8 9.1.4, the ARTIM timer's purpose);
- connections still negotiating are limited per host and in all, so that one host cannot
  fill ``max_associations`` with silence;
- a PDU longer than announced (P-DATA-TF: the Maximum Length Received, PS3.8 D.1) or an
  association PDU over 1 MiB ends the connection before its body is read;
- a data set whose fragments (PS3.8 E.2) add up to more than ``max_object_size`` ends
  the connection as it passes the limit: pynetdicom buffers a whole data set before the
  C-STORE handler sees it, so this is the only point where such a peer can be stopped
  (it gets no status; the ingest path answers 0xA700 for one that fits on the wire but
  not once inflated).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from compacs import metrics
from compacs.net import Handler

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
NEGOTIATION_PDU_LIMIT = 1 << 20
"""A-ASSOCIATE-RQ with 128 contexts of 20 syntaxes is ~70 KB; nothing else is larger."""
UNLIMITED_PDU_CAP = 1 << 26
"""With ``max_pdu = 0`` (no limit announced) a P-DATA-TF still stops at 64 MiB."""


@dataclass(frozen=True)
class Limits:
    acse_timeout: float
    network_timeout: float
    max_pdu: int
    max_object_size: int
    max_negotiating: int
    max_negotiating_per_host: int


@dataclass
class _Connection:
    sock: socket.socket
    host: str
    port: int
    established: bool = False
    opened: bool = False
    """Whether pynetdicom started the association (EVT_CONN_OPEN) on this connection."""
    received: int = 0
    """Bytes read from the peer so far (to tell a silent peer from a slow acceptor)."""

    @property
    def closed(self) -> bool:
        try:
            return self.sock.fileno() == -1
        except OSError:
            return True


class ConnectionGuard:
    """Admission, timeouts and the negotiation reaper of one association server."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._deadlines: list[tuple[float, int, _Connection]] = []
        self._order = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._reaper = threading.Thread(target=self._reap, name="negotiation-reaper", daemon=True)
        self._reaper.start()

    # -- the server's side (accept thread) ---------------------------------------------
    def admit(self, sock: Any, address: Any) -> bool:
        """Whether a new connection from ``address`` may negotiate; sets its timeouts."""
        host, port = str(address[0]), int(address[1])
        with self._lock:
            self._prune()
            pending = [c for c in self._connections.values() if not c.established]
            from_host = sum(1 for c in pending if c.host == host)
            refusal = None
            if from_host >= self.limits.max_negotiating_per_host:
                refusal = f"{from_host} connections from {host} still negotiating"
            elif len(pending) >= self.limits.max_negotiating:
                refusal = f"{len(pending)} connections still negotiating"
            if refusal is None:
                connection = _Connection(sock, host, port)
                self._connections[id(sock)] = connection
                deadline = time.monotonic() + self.limits.acse_timeout
                entry = (deadline, next(self._order), connection)
                heapq.heappush(self._deadlines, entry)
                if self._deadlines[0] is entry:  # else the reaper wakes earlier anyway
                    self._wake.notify()
        if refusal is not None:
            log.warning("connection from %s:%d closed at once: %s", host, port, refusal)
            metrics.ASSOCIATIONS.inc(outcome="refused_busy")
            return False
        with contextlib.suppress(OSError):
            sock.settimeout(self.limits.acse_timeout)
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._wake.notify()

    # -- association events ------------------------------------------------------------
    def handlers(self) -> list[Handler]:
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ESTABLISHED, self._on_established)]

    def _on_open(self, event: Any) -> None:
        assoc_socket = event.assoc.dul.socket
        if assoc_socket is None or not event.assoc.is_acceptor:
            return
        with self._lock:
            connection = self._connections.get(id(getattr(assoc_socket, "socket", None)))
        if connection is not None:
            connection.opened = True
        assoc_socket.recv = _capped_recv(
            functools.partial(recv_whole, assoc_socket), self.limits, event.address, connection
        )

    def _on_established(self, event: Any) -> None:
        sock = getattr(event.assoc.dul.socket, "socket", None)
        with self._lock:
            connection = self._connections.get(id(sock))
            if connection is not None:
                connection.established = True
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.network_timeout)

    # -- the reaper --------------------------------------------------------------------
    def _prune(self) -> None:
        for key in [k for k, c in self._connections.items() if c.closed]:
            del self._connections[key]

    def _reap(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (
                    not self._deadlines or self._deadlines[0][0] > time.monotonic()
                ):
                    wait = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                    self._wake.wait(wait)
                if self._stopped:
                    return
                _, _, connection = heapq.heappop(self._deadlines)
                stalled = not connection.established and not connection.closed
            if stalled:
                log.warning(
                    "association from %s:%d not negotiated within %.0f s (ACSE timeout; "
                    "%d bytes received, association %s): connection closed",
                    connection.host,
                    connection.port,
                    self.limits.acse_timeout,
                    connection.received,
                    "started" if connection.opened else "never started by pynetdicom",
                )
                metrics.ASSOCIATIONS.inc(outcome="negotiation_timeout")
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


class _DataSetSize:
    """Bytes of the data set being received, from the PDV items of P-DATA-TF bodies."""

    def __init__(self) -> None:
        self.received = 0

    def add(self, body: bytes | bytearray) -> int:
        """Count ``body``'s data set fragments; the total so far of the current one.

        PDV item (PS3.8 E.2, 9.3.5.1): 4-byte length, presentation context ID, message
        control header (bit 0: command, bit 1: last fragment), then the fragment."""
        pos, total = 0, self.received
        while pos + 6 <= len(body):
            (length,) = struct.unpack_from(">L", body, pos)
            control = body[pos + 5]
            if not control & 0x01:  # a data set fragment
                total = self.received + max(0, length - 2)
                self.received = 0 if control & 0x02 else total
            pos += 4 + length
        return total


RECV_CHUNK = 1 << 18
"""Most bytes asked of the socket per ``recv`` call while reading one PDU."""


def recv_whole(assoc_socket: Any, n: int) -> bytearray:
    """``n`` bytes from the association's socket, fewer only if the peer closed it: what
    pynetdicom's ``AssociationSocket.recv`` returns, read in as few calls as the kernel
    allows. pynetdicom asks for 4096 bytes a call (transport.py ``recv``): a 128 KiB PDU
    took 32 calls, a 512x512 CT slice 128 (issue 15, ~0.25 ms of the C-STORE path). The
    buffer grows as bytes arrive, so a peer that declares a long PDU and sends nothing
    costs no memory; a timeout or error is raised as from pynetdicom's read."""
    sock = assoc_socket.socket
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), RECV_CHUNK))
        if not chunk:
            break
        data += chunk
    return data


def _capped_recv(
    recv: Callable[[int], bytearray],
    limits: Limits,
    address: Any,
    connection: _Connection | None = None,
) -> Callable[[int], bytearray]:
    """pynetdicom's ``AssociationSocket.recv`` refusing a PDU body over the limit, and a
    data set over ``max_object_size`` as its fragments arrive.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (type, reserved, length) then
    ``recv(length)`` (dul.py ``_read_pdu_data``); an OSError there is Evt17, the transport
    closed, and the association ends as if the peer had dropped it."""
    last_type = [0]
    header_next = [True]  # the DUL alternates: a 6-byte header, then that PDU's body
    p_data_limit = limits.max_pdu or UNLIMITED_PDU_CAP
    data_set = _DataSetSize()

    def capped(n: int) -> bytearray:
        if header_next[0]:
            data = recv(n)
            if connection is not None:
                connection.received += len(data)
            if len(data) == 6:
                last_type[0], header_next[0] = data[0], False
            return data
        header_next[0] = True
        limit = p_data_limit if last_type[0] == P_DATA_TF else NEGOTIATION_PDU_LIMIT
        if n > limit:
            metrics.ASSOCIATIONS.inc(outcome="pdu_too_long")
            log.warning(
                "%s:%s sent a PDU of type 0x%02X declaring %d bytes, over the %d allowed "
                "(PS3.8 D.1 maximum length): connection closed",
                *address[:2],
                last_type[0],
                n,
                limit,
            )
            raise OSError(f"PDU of {n} bytes exceeds the limit of {limit}")
        data = recv(n)
        if connection is not None:
            connection.received += len(data)
        if last_type[0] == P_DATA_TF and data_set.add(data) > limits.max_object_size:
            metrics.ASSOCIATIONS.inc(outcome="object_too_large")
            log.warning(
                "%s:%s sent a data set of more than %d bytes ([ingest] max_object_size): "
                "connection closed",
                *address[:2],
                limits.max_object_size,
            )
            raise OSError("data set exceeds max_object_size")
        return data

    return capped
