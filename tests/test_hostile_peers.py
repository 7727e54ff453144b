"""Peers that stop talking, or announce more than they may send, cannot hold the node.

Raw sockets play the attacker (bounded in count and time); pynetdicom is the modality
that must still get through. The attacker connects from 127.0.0.2, the modality from
127.0.0.1: both loopback, so the per-host limit can be seen from one machine.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.conftest import echo, write_config
from tests.scu import dataset_bytes, send_datasets, send_raw

DEFLATED = "1.2.840.10008.1.2.1.99"

ATTACKER = "127.0.0.2"
ACSE_TIMEOUT = 3


def _a_associate_rq_start() -> bytes:
    """The first 16 bytes of an A-ASSOCIATE-RQ (PS3.8 9.3.2) that announces 1000 bytes."""
    return bytes([0x01, 0x00]) + struct.pack(">L", 1000) + b"\x00\x01\x00\x00COMPAC"


def _silent_connections(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        sock.sendall(_a_associate_rq_start())
        out.append(sock)
    return out


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the node closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _node(node_factory, tmp_path, extra: str = ""):
    config = write_config(
        tmp_path / "hostile.toml",
        f"[network]\nacse_timeout = {ACSE_TIMEOUT}\nnetwork_timeout = 4\n{extra}",
    )
    return node_factory(config=config)


def test_silent_connections_neither_lock_out_others_nor_stay(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    threads_before = _threads(node.proc.pid)
    silent = _silent_connections(node.port, 40)
    try:
        # another host gets through at once: the attacker holds at most its share of slots
        assert echo(node.port) == Status.SUCCESS
        # and every silent connection is closed by the node: at once past the per-host
        # limit, the others when the ACSE timeout ends their negotiation
        assert all(_closed_by_peer(s, ACSE_TIMEOUT + 10) for s in silent)
    finally:
        for sock in silent:
            sock.close()
    log = node.log()
    assert "still negotiating" in log and "not negotiated within 3 s (ACSE timeout)" in log
    # their threads are gone too (give the association threads a moment to end)
    for _ in range(50):
        if _threads(node.proc.pid) <= threads_before + 2:
            break
        time.sleep(0.1)
    assert _threads(node.proc.pid) <= threads_before + 2


def test_the_same_host_gets_through_once_the_acse_timeout_ends_the_stall(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    silent = _silent_connections(node.port, 40, source="127.0.0.1")
    try:
        answered = None
        for _ in range(4 * ACSE_TIMEOUT):
            try:
                answered = echo(node.port, timeout=2)
            except OSError:
                answered = None
            if answered == Status.SUCCESS:
                break
            time.sleep(1)
        assert answered == Status.SUCCESS
    finally:
        for sock in silent:
            sock.close()


def _established(port: int) -> socket.socket:
    """A raw socket that completed association negotiation (Verification only)."""
    ae = AE(ae_title="RAW")
    ae.add_requested_context(Verification)
    # build the A-ASSOCIATE-RQ with pynetdicom, send it on a socket of our own
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAW"
    primitive.called_ae_title = "COMPACS"
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    primitive.user_information = [item]
    cx = ae.requested_contexts[0]
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode())
    header = sock.recv(6)
    assert header[0] == 0x02, "A-ASSOCIATE-AC expected"
    (length,) = struct.unpack(">L", header[2:6])
    while length:
        length -= len(sock.recv(length))
    return sock


def test_a_p_data_longer_than_announced_ends_the_connection_unread(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    sock = _established(node.port)
    try:
        sock.sendall(bytes([0x04, 0x00]) + struct.pack(">L", 0xFFFFFFFF) + b"\x00" * 64)
        assert _closed_by_peer(sock, 10)
    finally:
        sock.close()
    assert "declaring 4294967295 bytes, over the 262144 allowed" in node.log()
    assert echo(node.port) == Status.SUCCESS


def test_a_p_data_that_stops_half_way_is_ended_by_the_network_timeout(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    sock = _established(node.port)
    try:
        sock.sendall(bytes([0x04, 0x00]) + struct.pack(">L", 10000) + b"\x00" * 100)
        assert _closed_by_peer(sock, 4 + 10)  # network_timeout = 4
    finally:
        sock.close()
    assert echo(node.port) == Status.SUCCESS


def _rss_mib(pid: int) -> float:
    """Peak resident memory of the process (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_deflate_bomb_is_refused_as_it_inflates(node_factory, tmp_path):
    """1 MB on the wire claiming 1 GiB once inflated: refused with 0xA700 after inflating at
    most max_object_size, never the whole; nothing stored, and the node serves on."""
    node = _node(node_factory, tmp_path, "[ingest]\nmax_object_size = 67108864\n")
    (ds,) = ct_series(1, 16, 16, seed=900)
    plain = dataset_bytes(ds)
    # a private OB element of 1 GiB of zeros (0x0009,0x1010), encoded explicit VR LE
    huge = struct.pack("<HH2s2xL", 0x0009, 0x1010, b"OB", 1 << 30)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(plain[: plain.find(b"\xe0\x7f\x10\x00")])  # up to Pixel Data
    body += deflater.compress(huge)
    zeros = bytes(1 << 24)
    for _ in range(64):
        body += deflater.compress(zeros)
    body += deflater.flush()
    assert len(body) < 2 << 20
    response = send_raw(node.port, str(ds.SOPClassUID), str(ds.SOPInstanceUID), DEFLATED, body)
    assert response.Status == Status.OUT_OF_RESOURCES
    assert "inflates to more than 67108864 bytes" in response.ErrorComment
    peak = _rss_mib(node.proc.pid)
    print(
        f"\npeak RSS after a 1 GiB deflate bomb ({len(body) / 2**20:.1f} MiB sent): {peak:.0f} MiB"
    )
    assert peak < 1024  # the 1 GiB was never materialised
    assert node.stats()["instances"] == 0
    assert echo(node.port) == Status.SUCCESS


def test_a_data_set_over_the_size_limit_ends_the_association_as_it_arrives(node_factory, tmp_path):
    node = _node(node_factory, tmp_path, "[ingest]\nmax_object_size = 1048576\n")
    (small,) = ct_series(1, 64, 64, seed=901)
    (large,) = ct_series(1, 1024, 1024, seed=902)  # 2 MiB of pixels
    assert send_datasets(node.port, [small]) == [Status.SUCCESS]
    try:
        statuses = send_datasets(node.port, [large])
    except (AssertionError, RuntimeError, OSError):  # the association went away under it
        statuses = None
    assert statuses != [Status.SUCCESS]
    assert "([ingest] max_object_size): connection closed" in node.log()
    assert node.stats()["instances"] == 1
    assert echo(node.port) == Status.SUCCESS
