"""Latency of one association to a node, measured by a pynetdicom client whose own
reactors do not poll (``event_driven_on_open``), so that the client adds no latency:
shared by tests/test_event_reactor.py and bench/association_latency.py."""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from compacs.net.event_reactor import event_driven_on_open
from tests.support.node import NodeProcess
from tests.support.procfs import cpu_seconds


def client(*contexts: str, timeout: float = 30) -> AE:
    ae = AE(ae_title="LATENCY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for context in contexts:
        ae.add_requested_context(context)
    return ae


def associate(ae: AE, node: NodeProcess) -> Any:
    """An established association to ``node`` whose client reactors do not poll."""
    assoc = ae.associate(
        "127.0.0.1",
        node.port,
        ae_title=node.aet,
        evt_handlers=[(evt.EVT_CONN_OPEN, event_driven_on_open)],
    )
    assert assoc.is_established
    return assoc


def idle_cpu(node: NodeProcess, count: int = 8, seconds: float = 5) -> float:
    """CPU seconds the node spends over ``seconds`` with ``count`` idle associations open."""
    held = [associate(client(Verification), node) for _ in range(count)]
    try:
        time.sleep(0.5)  # past the set-up
        assert node.proc is not None
        before = cpu_seconds(node.proc.pid)
        time.sleep(seconds)
        return cpu_seconds(node.proc.pid) - before
    finally:
        for assoc in held:
            assoc.release()


def echo_ms(node: NodeProcess, count: int = 200) -> float:
    """ms per C-ECHO of ``count`` on one association; each must succeed."""
    assoc = associate(client(Verification), node)
    try:
        start = time.perf_counter()
        statuses = [assoc.send_c_echo().Status for _ in range(count)]
        elapsed = (time.perf_counter() - start) * 1000 / count
    finally:
        assoc.release()
    assert statuses == [0] * count
    return elapsed


def find_ms(node: NodeProcess, study: str, series: str, count: int = 200) -> float:
    """ms per response of one C-FIND IMAGE that must match ``count`` instances."""
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = study, series
    query.SOPInstanceUID = ""
    assoc = associate(client(StudyRootQueryRetrieveInformationModelFind), node)
    try:
        start = time.perf_counter()
        pending = [
            status.Status
            for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if status is not None and status.Status in (0xFF00, 0xFF01)
        ]
        elapsed = (time.perf_counter() - start) * 1000 / count
    finally:
        assoc.release()
    assert len(pending) == count
    return elapsed
