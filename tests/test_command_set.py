"""net/command_set.py writes DIMSE command sets byte for byte as pynetdicom's own encoder
(pydicom's writer) does, for every message type and every value shape."""

from __future__ import annotations

import pynetdicom.dimse_messages as messages
import pytest
from pynetdicom.dsutils import encode as pynetdicom_encode

from compacs.net import command_set

MESSAGE_TYPES = [
    getattr(messages, name) for name in dir(messages) if name.endswith(("_RQ", "_RSP"))
]
# two value shapes per VR: odd and even lengths, one and several values
VALUES = {
    "UL": (0, 4294967295),
    "US": (0xFF00, [1, 2, 3]),
    "UI": ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.20"),
    "AE": ("DEST", "ODD"),
    "LO": ("a comment of odd length", "an even comment"),
    "SH": ("ODD", "EVEN"),
    "CS": ("ODD", "EVEN"),
    "AT": ([0x00100010], [0x00100010, 0x0020000D]),
}


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("shape", [0, 1, None])
def test_every_command_set_is_encoded_as_pynetdicom_encodes_it(message_type, shape):
    command = message_type().command_set
    for element in command:
        if element.tag == 0x00000000:
            continue
        element.value = None if shape is None else VALUES[str(element.VR)][shape]
    command.CommandGroupLength = 0
    assert command_set.encode_command_set(command) == pynetdicom_encode(command, True, True)


def test_what_it_does_not_write_goes_to_pynetdicom():
    command = messages.C_FIND_RSP().command_set
    command.Status = 0
    command.ErrorComment = "caf\u00e9"  # not ASCII: pydicom's character set rules
    command.PatientName = "DOE^JOHN"  # not a command element
    assert command_set.encode(command, True, True) == pynetdicom_encode(command, True, True)
    with pytest.raises(Exception):  # noqa: B017 - the fast path refuses, whatever it raises
        command_set.encode_command_set(command)


def test_install_replaces_only_pynetdicoms_own_encoder(monkeypatch):
    monkeypatch.setattr(messages, "encode", pynetdicom_encode)
    command_set.install()
    assert messages.encode is command_set.encode
    command_set.install()  # idempotent
    monkeypatch.setattr(messages, "encode", lambda *a: b"")
    with pytest.raises(command_set.UnsupportedPynetdicom):
        command_set.install()


def test_a_message_encodes_to_the_same_pdvs_either_way(monkeypatch):
    message = messages.C_STORE_RQ()
    for element in message.command_set:
        if element.tag != 0:
            element.value = VALUES[str(element.VR)][0]
    pdvs = {}
    for name, encoder in (("pydicom", pynetdicom_encode), ("fast", command_set.encode)):
        monkeypatch.setattr(messages, "encode", encoder)
        message._set_command_group_length()
        pdvs[name] = [p.presentation_data_value_list for p in message.encode_msg(1, 16384)]
    assert pdvs["fast"] == pdvs["pydicom"]
