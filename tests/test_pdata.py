"""A DIMSE message's PDUs written together (net/pdata.py, issue 15): the bytes are the ones
pynetdicom's own P-DATA-TF encoder makes, and a C-MOVE sub-operation's 100 KB data set
leaves the node in one socket write instead of one per 16 KB PDU (counted by strace on the
node), arriving bit-exact at DCMTK's storescp (pydicom decodes what it wrote)."""

from __future__ import annotations

import re
from io import BytesIO

import numpy as np
import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from compacs.dicom.status import Status
from compacs.net.pdata import WireBytes, wire_batches
from compacs.synthetic import ct_series
from tests.support.node import NO_COMPRESSION, NodeProcess, write_config
from tests.support.retrieve import StoreSCP, movescu
from tests.support.scu import send_datasets
from tests.support.strace import traced


@pytest.mark.parametrize(
    "size, max_pdu", [(0, 16384), (1, 16384), (100_000, 16384), (100_000, 0), (700_000, 4096)]
)
def test_the_wire_is_what_pynetdicom_encodes_pdu_by_pdu(size, max_pdu):
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = "1.2.3.4"
    request.Priority = 0
    request.DataSet = BytesIO(bytes(range(256)) * (size // 256) + b"\x01" * (size % 256))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(3, max_pdu))
    expected = b"".join(P_DATA_TF(pdata).encode() for pdata in fragments)
    batches = list(wire_batches(iter(fragments), 3, batch=64 * 1024))
    assert all(isinstance(b, WireBytes) for b in batches)
    assert b"".join(batches) == expected
    assert all(len(b) < 64 * 1024 + max(max_pdu, size) + 12 for b in batches)


def p_data_writes_to_the_destination(trace: str) -> int:
    """The writes of P-DATA-TF PDUs (PDU type 04H, PS3.8 9.3.5) on the socket on which the
    node requested an association (A-ASSOCIATE-RQ, type 01H): the C-MOVE sub-association."""
    sends = re.findall(r'sendto\((\d+), "\\(\d)\\0', trace)
    (sub,) = {fd for fd, pdu_type in sends if pdu_type == "1"}
    return sum(1 for fd, pdu_type in sends if fd == sub and pdu_type == "4")


def test_a_c_move_sub_operation_is_one_socket_write(tmp_path):
    dest = StoreSCP(tmp_path / "dest", "DEST", accept_all=True)
    node = NodeProcess(
        tmp_path / "node",
        config=write_config(tmp_path / "plain.toml", NO_COMPRESSION),
        extra_args=("--peer", f"DEST@127.0.0.1:{dest.port}"),
    ).start()
    series = list(ct_series(10, 224, 224, seed=404, patient_id="WIRE"))  # 100 KB each
    try:
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 10
        options = ["-e", "trace=sendto,write,sendmsg"]
        with traced([node.proc.pid], options, tmp_path / "strace.txt") as trace:
            result = movescu(node, "DEST", str(series[0].StudyInstanceUID))
        assert result.returncode == 0, result.stderr[-1500:]
        writes = p_data_writes_to_the_destination(trace.read_text())
        received = dest.received()
    finally:
        node.stop()
        dest.stop()
    assert set(received) == {str(ds.SOPInstanceUID) for ds in series}
    for ds in series:
        assert np.array_equal(received[str(ds.SOPInstanceUID)].pixel_array, ds.pixel_array)
    print(f"\nC-MOVE of 10 x 100 KB to a 16 KB-PDU storescp: {writes} P-DATA writes")
    # one write per C-STORE-RQ (a partial send may take a second); one per 16 KB PDU
    # would be 8 a sub-operation
    assert writes <= 2 * 10
