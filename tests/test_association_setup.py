"""Association set-up and release at Orthanc's pace (issue 15: C-ECHO, C-FIND STUDY).

What each accepted association costs the node besides its DIMSE work: the threads started
for it (counted by strace on the node while DCMTK's echoscu connects) and the pynetdicom
event handlers bound to it (read from the running node's association while a pynetdicom
requestor holds it open)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.sop_class import Verification

from compacs.config import from_document
from compacs.node import Node
from tests.conftest import dcmtk_env, free_port, require_dcmtk

ASSOCIATIONS = 5


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
    if shutil.which("strace") is None:
        pytest.fail("strace is missing (Debian package strace)")
    trace = tmp_path / "strace.txt"
    strace = subprocess.Popen(
        ["strace", "-f", "-e", "trace=clone,clone3,accept,accept4", "-o", str(trace),
         "-p", str(node.proc.pid)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # attached to every thread
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
    finally:
        strace.terminate()
        strace.wait(30)
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


@pytest.fixture
def restore_pynetdicom_config(monkeypatch) -> None:
    """The Node sets pynetdicom's configuration process-wide: restored afterwards."""
    for name in (
        "LOG_HANDLER_LEVEL",
        "LOG_REQUEST_IDENTIFIERS",
        "LOG_RESPONSE_IDENTIFIERS",
        "STORE_SEND_CHUNKED_DATASET",
    ):
        monkeypatch.setattr(pynetdicom_config, name, getattr(pynetdicom_config, name))


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
