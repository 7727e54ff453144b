"""Event-driven associations (net/event_reactor.py; issue 15, pydicom/pynetdicom#650).

- the pin: an unsupported pynetdicom (version, or an internal gone) stops the node at
  start-up instead of silently going back to polling;
- an idle association costs the node ~no CPU: measured against the node with pynetdicom's
  own polling reactors (``PollingNode``), in the same test;
- the timers still fire: the network (idle) timeout ends an idle association;
- C-ECHO and C-FIND latency, polling and event driven, printed (measured, not asserted).
"""

from __future__ import annotations

import socket
import statistics
import time
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from compacs.net import event_reactor
from compacs.net.event_reactor import UnsupportedPynetdicom
from compacs.net.server import build_ae
from compacs.synthetic import ct_series
from tests.support.latency import associate, client, echo_ms, find_ms, idle_cpu
from tests.support.node import NO_COMPRESSION, NodeProcess, PollingNode, write_config
from tests.support.scu import send_datasets

TIMEOUTS = {"acse": 30, "dimse": 30, "network": 60}


@pytest.fixture
def fresh_check():
    """``require_supported`` caches its verdict: each test here checks anew."""
    event_reactor._checked.cache_clear()
    yield
    event_reactor._checked.cache_clear()


# -- the pin ---------------------------------------------------------------------------


def test_the_installed_pynetdicom_is_the_one_it_was_written_for(fresh_check):
    assert event_reactor.problems() == []
    event_reactor.require_supported()


def test_a_missing_internal_stops_the_node_at_start_up(fresh_check, monkeypatch):
    monkeypatch.delattr(DULServiceProvider, "_is_transport_event")
    assert any("_is_transport_event" in p for p in event_reactor.problems())
    with pytest.raises(UnsupportedPynetdicom, match="_is_transport_event"):
        build_ae("COMPACS", max_pdu=16382, max_associations=4, timeouts=TIMEOUTS)


def test_a_changed_reactor_loop_stops_the_node_at_start_up(fresh_check, monkeypatch):
    def run_reactor(self) -> None:  # a 3.0.x-looking loop that does something else
        while not self._kill_thread:
            time.sleep(self._run_loop_delay)

    monkeypatch.setattr(DULServiceProvider, "run_reactor", run_reactor)
    with pytest.raises(UnsupportedPynetdicom, match="run_reactor changed"):
        build_ae("COMPACS", max_pdu=16382, max_associations=4, timeouts=TIMEOUTS)


def test_another_pynetdicom_version_stops_the_node_at_start_up(fresh_check, monkeypatch):
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    with pytest.raises(UnsupportedPynetdicom, match=r"pynetdicom 3\.1\.0"):
        build_ae("COMPACS", max_pdu=16382, max_associations=4, timeouts=TIMEOUTS)


# -- behaviour through the real node ---------------------------------------------------


def _plain(kind: type[NodeProcess], tmp_path: Path, name: str) -> NodeProcess:
    config = write_config(tmp_path / f"{name}.toml", NO_COMPRESSION)
    return kind(tmp_path / name, config=config).start()


def test_idle_associations_cost_the_node_no_cpu(tmp_path):
    """pynetdicom's reactors wake 1000 times a second per thread, two threads per
    association; waiting on the socket and the queues, an idle one costs nothing."""
    polling = _plain(PollingNode, tmp_path, "polling")
    try:
        before = idle_cpu(polling)
    finally:
        polling.stop()
    node = _plain(NodeProcess, tmp_path, "event")
    try:
        after = idle_cpu(node)
    finally:
        node.stop()
    print(f"\nnode CPU over 5 s, 8 idle associations: polling {before:.2f} s, event {after:.2f} s")
    assert before > 0.2, "the polling reference did not poll: nothing to compare with"
    assert after < before / 5


def test_the_network_timeout_still_ends_an_idle_association(node_factory, tmp_path):
    """The association reactor waits with the idle timer's deadline (PS3.8 9.1.4 leaves
    the timeout to the implementation; compacs: [network] network_timeout)."""
    config = write_config(tmp_path / "t.toml", "[network]\nnetwork_timeout = 2\n")
    node = node_factory(config=config)
    assoc = associate(client(Verification, timeout=60), node)
    start = time.monotonic()
    while assoc.is_established and time.monotonic() - start < 15:
        time.sleep(0.05)
    waited = time.monotonic() - start
    assert assoc.is_aborted, "the node did not end the idle association"
    assert 1.5 < waited < 15
    assert "Network timeout reached" in node.log()


def _threads(node: NodeProcess) -> int:
    assert node.proc is not None
    return len(list(Path(f"/proc/{node.proc.pid}/task").iterdir()))


def test_a_vanished_peer_ends_the_association_at_once(node_factory):
    """The DUL waits on its socket: a peer whose connection closes is seen at once and
    the association's threads end (not at the network timeout, 60 s here)."""
    node = node_factory()
    time.sleep(0.5)  # the start-up probe's association has ended
    baseline = _threads(node)
    assoc = associate(client(Verification), node)
    assert _threads(node) > baseline
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 5
    while _threads(node) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _threads(node) <= baseline, "the association's threads outlived its connection"
    again = associate(client(Verification), node)
    assert again.send_c_echo().Status == 0
    again.release()


def test_echo_and_find_latency_polling_and_event_driven(tmp_path):
    """Printed, not asserted (the machine is shared): 100 C-ECHOs and a C-FIND IMAGE of 100
    matches on one association, ms each, medians of 3, both nodes up side by side."""
    datasets = list(ct_series(100, 16, 16, seed=15))
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    nodes = {
        "polling": _plain(PollingNode, tmp_path, "p"),
        "event": _plain(NodeProcess, tmp_path, "e"),
    }
    try:
        figures: dict[str, dict[str, list[float]]] = {}
        for name, node in nodes.items():
            assert send_datasets(node.port, datasets) == [0] * 100
            figures[name] = {"echo": [], "find": []}
        for _ in range(3):
            for name, node in nodes.items():
                figures[name]["echo"].append(echo_ms(node, 100))
                figures[name]["find"].append(find_ms(node, study, series, 100))
    finally:
        for node in nodes.values():
            node.stop()
    print()
    for name, measured in figures.items():
        echo = statistics.median(measured["echo"])
        find = statistics.median(measured["find"])
        print(f"{name}: C-ECHO {echo:.2f} ms each, C-FIND IMAGE {find:.2f} ms per match")


def _status_field(node: NodeProcess, name: str) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(name)


def test_600_associations_leave_threads_and_memory_as_they_were(tmp_path):
    """The accept loop no longer runs pynetdicom's full gc.collect() every 60th call
    (net/server.NoDelayAssociationServer.service_actions): what 600 associations leave
    behind is freed by Python's own collector. Threads back to where they were, resident
    memory within a few MiB of what 150 associations had warmed up."""
    node = _plain(NodeProcess, tmp_path, "gc")
    ae = client(Verification)

    def associations(count: int) -> None:
        for _ in range(count):
            assoc = associate(ae, node)
            assert assoc.send_c_echo().Status == 0
            assoc.release()

    try:
        associations(150)
        time.sleep(0.5)  # the last association threads end
        threads, rss = _status_field(node, "Threads"), _status_field(node, "VmRSS")
        associations(600)
        time.sleep(0.5)
        grown = (_status_field(node, "VmRSS") - rss) / 1024
        after = _status_field(node, "Threads")
    finally:
        node.stop()
    print(f"\n600 associations: threads {threads} -> {after}, RSS grew {grown:.1f} MiB")
    assert after <= threads
    assert grown < 8
