"""Association set-up and release at Orthanc's pace (issue 15: C-ECHO, C-FIND STUDY).

What each accepted association costs the node besides its DIMSE work: the threads started
for it (counted by strace on the node while DCMTK's echoscu connects) and the pynetdicom
event handlers bound to it (read from the running node's association while a pynetdicom
requestor holds it open)."""

from __future__ import annotations

import copy
import gc
import re
import subprocess
import threading
import time
from collections.abc import Iterator

import pynetdicom
from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from compacs.config import from_document
from compacs.net.negotiation import ordered_contexts
from compacs.net.server import build_ae, make_server
from compacs.node import Node
from tests.support.dcmtk import dcmtk_env, require_dcmtk
from tests.support.node import free_port
from tests.support.strace import traced

ASSOCIATIONS = 5
JPEG_LS, EXPLICIT = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.1"


def thread_starts_per_connection(trace: str) -> tuple[int, int]:
    """(threads started, connections accepted) in an ``strace -f`` log of the node."""
    clones = len(re.findall(r"clone3?\(.*\) = \d+", trace))
    clones += len(re.findall(r"<\.\.\. clone3? resumed>.* = \d+", trace))
    accepts = len(re.findall(r"accept4?\(.*\) = \d+", trace))
    accepts += len(re.findall(r"<\.\.\. accept4? resumed>.* = \d+", trace))
    return clones, accepts


def test_an_accepted_association_starts_two_threads_not_three(node, tmp_path):
    """pynetdicom's association and its DUL each run a thread; socketserver's ThreadingMixIn
    started a third per connection, only to build the Association and start its thread.
    The node now does that in its accept thread (net/server.py process_request)."""
    require_dcmtk()
    options = ["-e", "trace=clone,clone3,accept,accept4"]
    with traced([node.proc.pid], options, tmp_path / "strace.txt") as trace:
        for _ in range(ASSOCIATIONS):
            echo = subprocess.run(
                ["echoscu", "-aet", "PACE", "-aec", node.aet, "127.0.0.1", str(node.port)],
                env=dcmtk_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert echo.returncode == 0, echo.stderr[-1500:]
        time.sleep(0.5)  # the last association's threads have ended
    clones, accepts = thread_starts_per_connection(trace.read_text())
    print(f"\n{accepts} associations accepted, {clones} threads started")
    assert accepts == ASSOCIATIONS
    assert clones == 2 * ASSOCIATIONS


STANDARD = {
    evt.EVT_PDU_RECV: standard_pdu_recv_handler,
    evt.EVT_PDU_SENT: standard_pdu_sent_handler,
    evt.EVT_DIMSE_RECV: standard_dimse_recv_handler,
    evt.EVT_DIMSE_SENT: standard_dimse_sent_handler,
}


def serving(tmp_path, log_level: str, log_phi: bool = False) -> Iterator[Node]:
    """A Node in this process, serving until the loop over it ends."""
    node_section = {"data_dir": str(tmp_path / "data"), "host": "127.0.0.1", "port": free_port()}
    settings = from_document(
        {
            "node": {**node_section, "log_level": log_level},
            "security": {"log_phi": log_phi},
            "http": {"port": 0},
            "compression": {"when": "off"},
        }
    )
    node = Node(settings)
    thread = threading.Thread(target=node.serve_forever, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        node.stop()
        thread.join(60)


def standard_handlers_of_an_accepted_association(node: Node) -> dict[str, bool]:
    """For each of pynetdicom's standard log handlers, whether the association the node
    accepted from a pynetdicom requestor has it bound (read while the requestor holds it)."""
    ae = AE(ae_title="PACE")
    ae.add_requested_context(Verification)
    host, port = node.address
    assoc = ae.associate(host, port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        (accepted,) = [a for a in node.server.active_associations if a.is_alive()]
        return {
            event.name: any(h[0] is handler for h in accepted.get_handlers(event))
            for event, handler in STANDARD.items()
        }
    finally:
        assoc.release()


def test_pynetdicom_log_handlers_are_bound_only_when_their_lines_are_logged(
    tmp_path, restore_pynetdicom_config
):
    """pynetdicom's standard handlers describe every PDU and DIMSE message at INFO/DEBUG
    only; compacs keeps the pynetdicom logger at WARNING unless the admin asks for DEBUG
    with patient data (compacs.logs.configure). Without that, they are not bound: the work
    for lines nobody reads leaves every association's set-up, messages and release."""
    assert pynetdicom.__version__.startswith("3.0.")
    for node in serving(tmp_path / "quiet", "INFO"):
        assert standard_handlers_of_an_accepted_association(node) == dict.fromkeys(
            (e.name for e in STANDARD), False
        )
    for node in serving(tmp_path / "verbose", "DEBUG", log_phi=True):
        assert standard_handlers_of_an_accepted_association(node) == dict.fromkeys(
            (e.name for e in STANDARD), True
        )


class CountedContext(PresentationContext):
    """A presentation context counting the reads of its abstract syntax."""

    reads = 0

    @property
    def abstract_syntax(self):  # type: ignore[override]
        CountedContext.reads += 1
        return PresentationContext.abstract_syntax.fget(self)

    @abstract_syntax.setter
    def abstract_syntax(self, uid) -> None:
        PresentationContext.abstract_syntax.fset(self, uid)


def test_negotiation_indexes_the_nodes_contexts_once_not_per_association():
    """Every association's EVT_REQUESTED handler (negotiation.prefer_on_request) looks up
    the proposed abstract syntaxes among the node's ~210 supported contexts: the index by
    abstract syntax is built with the server, and each association's copy of the contexts
    (pynetdicom's RequestHandler deep-copies them) reads it instead of all ~210 contexts."""
    ae = build_ae(
        "PACE", max_pdu=16384, max_associations=4, timeouts={"acse": 5, "dimse": 5, "network": 5}
    )
    counted = []
    for cx in ae.supported_contexts:
        twin = CountedContext()
        twin.abstract_syntax = cx.abstract_syntax
        twin.transfer_syntax = cx.transfer_syntax
        twin.scu_role, twin.scp_role = cx.scu_role, cx.scp_role
        counted.append(twin)
    proposed = [build_context(Verification), build_context(CTImageStorage, [JPEG_LS, EXPLICIT])]
    for n, cx in enumerate(proposed):
        cx.context_id = 2 * n + 1
    expected = [
        (str(cx.abstract_syntax), cx.transfer_syntax)
        for cx in ordered_contexts(proposed, ae.supported_contexts)
    ]
    server = make_server(ae, "127.0.0.1", 0, [])
    try:
        server.contexts = type(server.contexts)(counted)
        CountedContext.reads = 0
        for _ in range(3):  # three associations
            contexts = ordered_contexts(proposed, copy.deepcopy(server.contexts))
            assert [(str(cx.abstract_syntax), cx.transfer_syntax) for cx in contexts] == expected
        reads = CountedContext.reads
    finally:
        server.server_close()
    print(f"\n{len(counted)} supported contexts, {reads} abstract syntax reads in 3 negotiations")
    assert expected[1] == (CTImageStorage, [JPEG_LS, EXPLICIT])
    assert reads <= 3 * len(proposed) * 2


def test_the_start_up_heap_is_out_of_the_collectors_reach_while_serving(
    tmp_path, restore_pynetdicom_config
):
    """A full collection of the start-up heap (~90k objects) held the GIL ~30-40 ms, which
    the association in progress waited out; while the node serves, a full collection
    scans only the objects serving created (node.settle_heap: gc.freeze)."""
    for node in serving(tmp_path / "node", "INFO"):
        assert standard_handlers_of_an_accepted_association(node)  # it serves
        frozen, scanned = gc.get_freeze_count(), len(gc.get_objects(generation=2))
        print(f"\n{frozen} objects frozen, {scanned} scanned by a full collection")
        assert frozen > 10 * scanned
    assert gc.get_freeze_count() == 0  # the node stopped: collectable again
