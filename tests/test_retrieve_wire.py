"""A retrieve's sub-operation command sets written and read without pydicom (issue 15,
net/dimse_wire.py): the C-STORE-RQ and the C-MOVE/C-GET pending responses are the bytes
pydicom's writer makes from pynetdicom's own message; a C-STORE-RSP read by hand gives
the primitive and status pynetdicom's decoder gives, and anything unusual is left to
pynetdicom; on a real association to DCMTK storescp neither pydicom path runs, and what
storescp wrote is the data set sent, byte for byte."""

from __future__ import annotations

import re
import struct
import threading
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _handlers, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import (
    _COMMAND_SET_KEYWORDS,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from compacs.config import from_document
from compacs.net import dimse_wire
from compacs.net.event_reactor import make_event_driven
from compacs.net.pdata import message_batches
from compacs.net.sender import EncodedDataSet, install
from compacs.node import Node
from compacs.synthetic import ct_series
from tests.support.node import free_port
from tests.support.retrieve import (
    StoreSCP,
    fixture_archive,  # noqa: F401 (the archive fixture)
    retrieve,
    study_of,
)
from tests.support.scu import dataset_bytes, send_datasets, send_raw

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"


def _pynetdicom_command(message: DIMSEMessage, primitive) -> bytes:
    """The command set as pynetdicom builds it, written by pydicom's own writer."""
    message.primitive_to_message(primitive)
    return pydicom_encode(message.command_set, True, True)


def _store_rq(uid: str, aet: str | None, origin: int | None, priority: int = 0) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = 65535
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = uid
    rq.Priority = priority
    rq.MoveOriginatorApplicationEntityTitle = aet
    rq.MoveOriginatorMessageID = origin
    rq.DataSet = BytesIO(b"\x08\x00\x16\x00")
    return rq


@pytest.mark.parametrize(
    "uid, aet, origin, priority",
    [
        ("1.2.3.4", "ARCHIVE", 3, 0),  # even UID, odd AE title
        ("1.2.3.45", "AE16CHARACTERSXX", 65535, 2),  # odd UID, 16-character AE
        ("1.2.826.0.1.3680043.8.498.1", None, None, 1),  # C-STORE of its own: no originator
    ],
)
def test_a_c_store_rq_command_is_what_pydicom_writes(uid, aet, origin, priority):
    rq = _store_rq(uid, aet, origin, priority)
    assert dimse_wire.command_bytes(rq) == _pynetdicom_command(C_STORE_RQ(), rq)


@pytest.mark.parametrize("kind, message", [(C_MOVE, C_MOVE_RSP), (C_GET, C_GET_RSP)])
@pytest.mark.parametrize(
    "status, counts",
    [(0xFF00, (199, 1, 0, 0)), (0xFF00, (0, 65535, 3, 2)), (0x0000, (None, 200, 0, 0))],
)
def test_a_retrieve_response_command_is_what_pydicom_writes(kind, message, status, counts):
    rsp = kind()
    rsp.MessageID = 7  # pynetdicom's C-MOVE loop sets it; the response does not carry it
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = MOVE if kind is C_MOVE else GET
    rsp.Status = status
    (
        rsp.NumberOfRemainingSuboperations,
        rsp.NumberOfCompletedSuboperations,
        rsp.NumberOfFailedSuboperations,
        rsp.NumberOfWarningSuboperations,
    ) = counts
    assert dimse_wire.command_bytes(rsp) == _pynetdicom_command(message(), rsp)


def test_what_the_fast_writer_does_not_write_is_left_to_pynetdicom():
    with_identifier = C_MOVE()
    with_identifier.MessageIDBeingRespondedTo = 1
    with_identifier.AffectedSOPClassUID = MOVE
    with_identifier.Status = 0xB000
    with_identifier.Identifier = BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00")
    commented = C_MOVE()
    commented.MessageIDBeingRespondedTo = 1
    commented.Status = 0xC000
    commented.ErrorComment = "no"
    empty = _store_rq("1.2.3", "A", 1)
    empty.DataSet = BytesIO()
    offending = C_STORE()
    offending.MessageIDBeingRespondedTo = 1
    offending.Status = 0xA900
    offending.OffendingElement = [0x00080018]
    for primitive in (with_identifier, commented, empty, offending):
        assert dimse_wire.command_bytes(primitive) is None


@pytest.mark.parametrize("comment", [None, "odd", "even", "storage full: No space left on device"])
@pytest.mark.parametrize("status, uid", [(0x0000, "1.2.3.45"), (0xA700, "1.2.3.4"), (0xB000, None)])
def test_a_c_store_rsp_command_is_what_pydicom_writes(status, uid, comment):
    """The response to each C-STORE the node receives (PS3.7 9.3.1.2)."""
    rsp = C_STORE()
    rsp.MessageID = 3
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = CT if uid else None
    rsp.AffectedSOPInstanceUID = uid
    rsp.Status = status
    rsp.ErrorComment = comment
    assert dimse_wire.command_bytes(rsp) == _pynetdicom_command(C_STORE_RSP(), rsp)


@pytest.mark.parametrize(
    "size, max_pdu", [(2, 16384), (100_000, 16384), (100_000, 0), (16378 * 3, 16384), (7, 8)]
)
def test_the_pdus_are_what_pynetdicom_encodes(size, max_pdu):
    rq = _store_rq("1.2.3.4", "ARCHIVE", 3)
    rq.DataSet = BytesIO(bytes(range(256)) * (size // 256) + b"\x01" * (size % 256))
    message = C_STORE_RQ()
    message.primitive_to_message(rq)
    expected = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(5, max_pdu))
    command = dimse_wire.command_bytes(rq)
    wire = b"".join(message_batches(command, rq.DataSet.getvalue(), 5, max_pdu, 64 * 1024))
    assert wire == expected


# -- the C-STORE-RSP read by hand against pynetdicom's decoder --------------------------


def _store_rsp(**elements) -> bytes:
    """A C-STORE-RSP command set written by pydicom (Implicit VR LE, PS3.7 9.3.1.2)."""
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = CT
    ds.CommandField = 0x8001
    ds.MessageIDBeingRespondedTo = 12
    ds.CommandDataSetType = 0x0101
    ds.Status = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    for keyword, value in elements.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.CommandGroupLength = len(pydicom_encode(ds, True, True)) - 12
    return pydicom_encode(ds, True, True)


def _pynetdicom_reads(raw: bytes) -> C_STORE:
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + raw]]
    message = DIMSEMessage()
    assert message.decode_msg(pdata)
    return message.message_to_primitive()


def _status(rsp: C_STORE) -> Dataset:
    """What ``Association._check_received_status`` returns from the primitive."""
    status = Dataset()
    status.Status = rsp.Status
    for keyword in rsp.STATUS_OPTIONAL_KEYWORDS:
        if getattr(rsp, keyword, None) is not None:
            setattr(status, keyword, getattr(rsp, keyword))
    return status


READ_BY_HAND = {
    "success": {},
    "odd instance UID": {"AffectedSOPInstanceUID": "1.2.3.4"},
    "no UIDs": {"AffectedSOPClassUID": None, "AffectedSOPInstanceUID": None},
    "warning with comment": {"Status": 0xB000, "ErrorComment": "coerced"},
    "failure with odd comment": {"Status": 0xA700, "ErrorComment": "Out of resources"[:15]},
    "comment with spaces": {"Status": 0xC000, "ErrorComment": " cannot  understand "},
    "empty comment": {"Status": 0xA900, "ErrorComment": ""},
}


@pytest.mark.parametrize("case", list(READ_BY_HAND))
def test_a_store_response_read_by_hand_is_what_pynetdicom_reads(case):
    raw = _store_rsp(**READ_BY_HAND[case])
    mine, theirs = dimse_wire.store_response(raw), _pynetdicom_reads(raw)
    assert mine is not None
    for attribute in ("MessageIDBeingRespondedTo", "AffectedSOPClassUID", "Status"):
        assert getattr(mine, attribute) == getattr(theirs, attribute)
    assert mine.AffectedSOPInstanceUID == theirs.AffectedSOPInstanceUID
    assert mine.ErrorComment == theirs.ErrorComment
    assert mine.is_valid_response and theirs.is_valid_response
    assert _status(mine) == _status(theirs)


def _with_group_length(raw: bytes, length: int) -> bytes:
    return raw[:8] + struct.pack("<I", length) + raw[12:]


LEFT_TO_PYNETDICOM = {
    "offending element": _store_rsp(Status=0xC000, OffendingElement=[0x00100010]),
    "error ID": _store_rsp(Status=0xC000, ErrorID=5),
    "non-ASCII comment": _store_rsp(Status=0xB000, ErrorComment="Fehler: ungültig"),
    "a data set announced": _store_rsp(CommandDataSetType=0x0001),
    "a C-FIND-RSP": _store_rsp(CommandField=0x8020),
    "a UID padded with a space": _store_rsp().replace(b"1.2.3.4.5\x00", b"1.2.3.4.5 "),
    "wrong group length": _with_group_length(_store_rsp(), 4),
    "truncated": _store_rsp()[:-3],
    "odd value length": _store_rsp()[:-2] + b"\x00" * 3,
    "no status": _store_rsp(Status=None),
}


@pytest.mark.parametrize("case", list(LEFT_TO_PYNETDICOM))
def test_anything_unusual_is_left_to_pynetdicom(case):
    assert dimse_wire.store_response(LEFT_TO_PYNETDICOM[case]) is None


# -- on a real association ---------------------------------------------------------------


def test_sub_operations_to_storescp_skip_pydicom_and_arrive_byte_for_byte(tmp_path, monkeypatch):
    """A C-STORE of stored bytes to DCMTK storescp on an event-driven association, as the
    C-MOVE loop sends it: neither pynetdicom's command set builder nor its decoder runs,
    storescp answers Success, and the data set it wrote is the one sent (pydicom reads it)."""
    install()
    built = []
    for name in ("primitive_to_message", "message_to_primitive"):
        original = getattr(DIMSEMessage, name)

        def spy(self, *args, _name=name, _original=original):
            built.append((_name, type(self).__name__))
            return _original(self, *args)

        monkeypatch.setattr(DIMSEMessage, name, spy)
    dest = StoreSCP(tmp_path / "dest", "DEST", accept_all=True)
    sent = {}
    try:
        ae = AE(ae_title="ARCHIVE")
        ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
        handlers = [(evt.EVT_CONN_OPEN, lambda event: make_event_driven(event.assoc))]
        assoc = ae.associate("127.0.0.1", dest.port, ae_title="DEST", evt_handlers=handlers)
        assert assoc.is_established
        for ds in ct_series(3, seed=15):
            data = BytesIO()
            pydicom.dcmwrite(data, ds, implicit_vr=False, little_endian=True)
            encoded = data.getvalue()
            item = EncodedDataSet(CT, str(ds.SOPInstanceUID), "1.2.840.10008.1.2.1", encoded)
            status = assoc.send_c_store(item, msg_id=9, originator_aet="ORIGIN", originator_id=3)
            assert status.Status == 0x0000
            sent[str(ds.SOPInstanceUID)] = encoded
        assoc.release()
    finally:
        dest.stop()
    assert [b for b in built if b[1] in ("C_STORE_RQ", "C_STORE_RSP")] == []
    received = {}
    for path in (tmp_path / "dest").iterdir():
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f)
            received[str(ds.SOPInstanceUID)] = path.read_bytes()
    assert received.keys() == sent.keys()
    for uid, encoded in sent.items():
        assert received[uid].endswith(encoded)


# -- what a C-MOVE requestor reads ---------------------------------------------------------


def _counts(output: str) -> list[tuple[str, ...]]:
    """(status, remaining, completed, failed, warning) of each C-MOVE-RSP movescu printed
    (-d dumps each response's command set; DCMTK decodes it, not pydicom)."""
    out = []
    for block in re.split(r"Received (?:Final )?Move Response", output)[1:]:
        fields = []
        for label in (
            "DIMSE Status",
            "Remaining Suboperations",
            "Completed Suboperations",
            "Failed Suboperations",
            "Warning Suboperations",
        ):
            found = re.search(rf"{label}\s*:\s*(0x[0-9a-f]+|\d+)", block)
            fields.append(found.group(1) if found else "none")
        out.append(tuple(fields))
    return out


def test_movescu_reads_every_pending_count_and_the_final_response(archive):
    """Pending responses written by hand: DCMTK movescu reads remaining/completed/failed/
    warning counts that step by one per sub-operation (PS3.4 C.4.2.1.3), then the final
    Success with the completed count (C.4.2.3.1), and storescp holds the stored bytes."""
    node, sent, _, every = archive
    series = sent["SEND_JLS"]
    every.clear()
    result = retrieve("movescu", node, study_of(series), "-aem", "DEST_ALL", "-d")
    assert result.returncode == 0, result.stderr
    counts = _counts(result.stdout + result.stderr)
    n = len(series)
    pending = [("0xff00", str(n - k), str(k), "0", "0") for k in range(1, n + 1)]
    # the final response repeats pynetdicom's last Remaining (0), as it always has
    assert counts == [*pending, ("0x0000", "0", str(n), "0", "0")]
    assert every.received().keys() == series.keys()


def test_the_pynetdicom_internals_the_fast_paths_use_are_there():
    """Pinned like net/command_set.py: pynetdicom's receive_primitive still keeps a partial
    message in ``message`` and queues primitives on ``msg_queue``, its C-STORE primitive
    still has the attributes written and read here, and its standard DIMSE handlers are
    the ones the fast paths recognise (a pynetdicom upgrade that changes them fails here)."""

    names = DIMSEServiceProvider.receive_primitive.__code__.co_names
    assert {"message", "msg_queue", "put", "decode_msg", "message_to_primitive"} <= set(names)
    assert "_check_received_status" in Association.send_c_store.__code__.co_names
    for attribute in (
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
        "ErrorComment",
        "OffendingElement",
        "_dataset_path",
        "_context_id",
    ):
        assert hasattr(C_STORE(), attribute)
    ae = AE()
    assoc = Association(ae, "requestor")
    sent, received = assoc.get_handlers(evt.EVT_DIMSE_SENT), assoc.get_handlers(evt.EVT_DIMSE_RECV)
    assert [h for h, _ in sent] == [_handlers.standard_dimse_sent_handler]
    assert [h for h, _ in received] == [_handlers.standard_dimse_recv_handler]

    written = {"CommandGroupLength", "CommandField", "CommandDataSetType"}
    for name, layout, declined in (
        ("C-STORE-RQ", dimse_wire._STORE_RQ, set()),
        ("C-MOVE-RSP", dimse_wire._RETRIEVE_RSP, {"OffendingElement", "ErrorComment"}),
        ("C-GET-RSP", dimse_wire._RETRIEVE_RSP, {"OffendingElement", "ErrorComment"}),
    ):
        mine = {attribute for _, _, attribute in layout if attribute}
        assert set(_COMMAND_SET_KEYWORDS[name]) == mine | written | declined


def test_the_node_answers_c_stores_without_building_pydicom_command_sets(
    tmp_path, monkeypatch, restore_pynetdicom_config
):
    """Each C-STORE-RSP the node sends is written by dimse_wire, not built as a pydicom
    data set (~0.2 ms of each C-STORE, issue 15); pynetdicom's SCU reads its status and
    Error Comment, and the node's recent errors (activity.py, told without the event's
    message) still hold the refusal with its status, comment and calling AE."""

    built: list[str] = []
    original = DIMSEMessage.primitive_to_message

    def counted(self, primitive):
        built.append(type(self).__name__)
        return original(self, primitive)

    monkeypatch.setattr(DIMSEMessage, "primitive_to_message", counted)
    settings = from_document(
        {
            "node": {"data_dir": str(tmp_path / "data"), "host": "127.0.0.1", "port": free_port()},
            "http": {"port": 0},
            "compression": {"when": "off"},
        }
    )
    node = Node(settings)
    serving = threading.Thread(target=node.serve_forever)
    serving.start()
    try:
        good, other = ct_series(2, 64, 64, seed=34)
        assert send_datasets(settings.port, [good], calling="MODALITY") == [0x0000]
        refused = send_raw(
            settings.port, CT, "1.2.826.0.1.3680043.8.498.9", EXPLICIT, dataset_bytes(other)
        )
    finally:
        node.stop()
        serving.join(60)
    assert refused.Status == 0xA900
    assert refused.ErrorComment.startswith("SOP Instance UID (0008,0018) differs")
    assert "C_STORE_RSP" not in built and "C_STORE_RQ" in built  # the SCU's own requests
    (error,) = [e for e in node.activity.errors() if e.get("source") == "dimse"]
    assert error["status"] == "0xA900" and error["operation"] == "C-STORE"
    assert error["message"] == refused.ErrorComment
