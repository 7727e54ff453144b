"""The association acceptor: AE, presentation contexts and socket options."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from compacs import metrics
from compacs.dicom.sop_classes import storage_sop_classes
from compacs.dicom.syntaxes import accepted_for_storage
from compacs.net import Handler, command_set
from compacs.net.event_reactor import event_driven_on_open, require_supported
from compacs.net.guard import ConnectionGuard
from compacs.net.negotiation import SharedContexts, prefer_on_request
from compacs.net.reactor_guard import keep_responses_on_open
from compacs.net.sender import ArchiveAE

log = logging.getLogger(__name__)

QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)


class NoDelayAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket, shares the supported contexts
    (``negotiation.SharedContexts``), starts each association from the accept thread, and
    does the TLS handshake in the connection's own thread.

    Without TCP_NODELAY a DIMSE response can wait ~40 ms for the peer's delayed ACK
    (Nagle), which caps a single association at a few dozen instances per second.

    pynetdicom does the TLS handshake in ``get_request``, in the one thread that accepts
    every connection, and with no timeout: a client that connects and says nothing (a
    port scan, a load balancer's TCP health check) stopped the node accepting anything.
    Here the accept thread only wraps the socket; the handshake runs in the connection's
    thread, bounded by the ACSE timeout, and a failure is logged with the peer's address.
    """

    # socketserver listens with a backlog of 5: a burst of modalities connecting at once
    # (a morning's worth of scanners after a restart) would wait on SYN retries
    request_queue_size = 128

    guard: ConnectionGuard | None = None
    """Timeouts, admission and PDU limits per connection (see ``net/guard``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard is None or self.guard.admit(request, client_address)

    def service_actions(self) -> None:
        """Nothing. pynetdicom's runs a full ``gc.collect()`` every 60th call (one per
        accepted connection and per 0.5 s poll) "for whatever reason dead Association
        threads aren't being garbage collected": ~35 ms holding the GIL with compacs's
        imports, which the association being accepted waits for (profile of 60 C-ECHO
        associations, issue 15: 16% of the node's busy samples). Python's own collector
        frees reference cycles by allocation thresholds; the guard's tests hold memory
        and threads bounded across thousands of associations without it."""

    def server_close(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        super().server_close()

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None  # listening
        client, address = self.socket.accept()
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the association from the accept thread; over TLS, from a thread of its own.

        socketserver's ThreadingMixIn starts a thread per connection whose only job, in
        pynetdicom's RequestHandler, is to build the Association and start *its* thread:
        three threads per association (this one, the association's, its DUL's), the first
        living ~1 ms. Building the Association here takes no I/O and no lock held for
        long (the EVT_CONN_OPEN handlers: reactor guard, event-driven reactors, the
        connection guard's PDU limits), so the accept thread does it and one thread start,
        with its GIL hand-offs and the server's thread list bookkeeping, goes from every
        association's set-up (issue 15: C-ECHO and C-FIND STUDY against Orthanc's pace).
        A TLS handshake waits on the peer: it keeps its own thread (``finish_request``).
        Errors are handled as socketserver handles them: ``handle_error``, then the
        socket is shut down (``BaseServer._handle_request_noblock``)."""
        if isinstance(request, ssl.SSLSocket):
            super().process_request(request, client_address)
            return
        self.finish_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().finish_request(request, client_address)

    def _handshake(self, tls: ssl.SSLSocket, address: Any) -> bool:
        previous = tls.gettimeout()
        tls.settimeout(self.ae.acse_timeout)
        try:
            tls.do_handshake()
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            log.warning("TLS handshake with %s:%s failed: %s", *address[:2], exc)
            metrics.ASSOCIATIONS.inc(outcome="tls_failed")
            return False
        tls.settimeout(previous)
        return True


def set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations compacs requests (C-MOVE destinations,
    commitment reports): TCP_NODELAY on the outgoing socket too."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# Every association compacs requests (C-MOVE/C-GET destinations, forwarding, commitment
# reports) is opened with these: event driven (net/event_reactor.py) and race-guarded.
REQUESTOR_HANDLERS: list[Handler] = [
    (evt.EVT_CONN_OPEN, set_nodelay),
    (evt.EVT_CONN_OPEN, keep_responses_on_open),
    (evt.EVT_CONN_OPEN, event_driven_on_open),
]


def _counted(outcome: str) -> Any:
    return lambda event: metrics.ASSOCIATIONS.inc(outcome=outcome)


def end_negotiation_on_close(event: Event) -> None:
    """EVT_CONN_CLOSE: a peer that sent an undecodable A-ASSOCIATE-RQ is aborted by
    pynetdicom's DUL, but the association thread waits on for the request until the
    ACSE timeout (30 s): thirty garbage connections would fill max_associations and lock
    modalities out. An empty primitive ends that wait at once (pynetdicom treats it as
    the timeout). Found by tests/test_faults.py's PDU fuzzing."""
    assoc = event.assoc
    if assoc.is_acceptor and not assoc.is_established and assoc.requestor.primitive is None:
        # pynetdicom annotates the queue with its primitives only; receive_pdu returns what
        # it gets, and the acceptor takes None as its timeout (association.py run_reactor)
        cast("queue.Queue[object]", assoc.dul.to_user_queue).put(None)


# Acceptor side: the reactor guard, event-driven reactors, the transfer syntax preference
# for what the requestor proposed, associations by outcome for the metrics endpoint, and
# the above.
ACCEPTOR_HANDLERS: list[Handler] = [
    (evt.EVT_CONN_OPEN, keep_responses_on_open),
    (evt.EVT_CONN_OPEN, event_driven_on_open),
    (evt.EVT_REQUESTED, prefer_on_request),
    (evt.EVT_CONN_CLOSE, end_negotiation_on_close),
    (evt.EVT_ESTABLISHED, _counted("established")),
    (evt.EVT_REJECTED, _counted("rejected")),
    (evt.EVT_ABORTED, _counted("aborted")),
]


def build_ae(
    ae_title: str, *, max_pdu: int, max_associations: int, timeouts: dict[str, float]
) -> AE:
    """An AE accepting Verification and every storage SOP class (see ``sop_classes``), each
    with every transfer syntax a modality may send (PS3.5 Annex A); the order in which they
    are accepted is set per association by ``prefer_on_request``.

    Raises ``event_reactor.UnsupportedPynetdicom`` when the installed pynetdicom is not
    the one the event-driven associations were written for: the node does not start."""
    require_supported()
    command_set.install()
    ae = ArchiveAE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.maximum_associations = max_associations
    ae.acse_timeout = timeouts["acse"]
    ae.dimse_timeout = timeouts["dimse"]
    ae.network_timeout = timeouts["network"]
    # PS3.8 9.3.4: reject an association addressed to another AE (reason 7, "called AE
    # title not recognized"): a misconfigured modality learns at once, not after a store.
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for query_retrieve in QUERY_RETRIEVE:
        ae.add_supported_context(query_retrieve)
    # both roles: requests from modalities (we are SCP), and the reports of destinations
    # compacs forwarded to, which take the SCP role on an association of their own
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    syntaxes = accepted_for_storage()
    for sop_class in storage_sop_classes():
        # both roles: a modality's C-STORE (we are SCP), and C-GET, whose requestor
        # takes the SCP role for the storage sub-operations (PS3.7 D.3.3.4)
        ae.add_supported_context(sop_class, syntaxes, scu_role=True, scp_role=True)
    return ae


def make_server(
    ae: AE,
    host: str,
    port: int,
    handlers: list[Handler],
    ssl_context: Any = None,
    guard: ConnectionGuard | None = None,
) -> NoDelayAssociationServer:
    """The listening server; with ``ssl_context`` the port speaks DICOM over TLS only."""
    server = cast(
        NoDelayAssociationServer,
        ae.make_server(
            (host, port),
            evt_handlers=[*handlers, *(guard.handlers() if guard is not None else [])],
            server_class=NoDelayAssociationServer,
            ssl_context=ssl_context,
        ),
    )
    server.guard = guard
    return server
