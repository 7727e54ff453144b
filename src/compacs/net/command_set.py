"""A fast encoder for DIMSE command sets (PS3.7 6.3.1: Implicit VR Little Endian).

pynetdicom encodes every command set twice per message (once to set Command Group Length,
once to send it, ``dimse_messages.DIMSEMessage``) through pydicom's generic data set
writer, ~100 us each: for a C-FIND of 200 matches that is 40 ms of CPU, for a C-MOVE of
200 instances twice that (a C-STORE-RQ and a pending C-MOVE-RSP per sub-operation). A
command set holds only group 0000 elements of a handful of VRs (PS3.7 E.1), so they are
written here directly, byte for byte what pydicom writes (tests compare the two).

:func:`install` replaces the name ``encode`` in ``pynetdicom.dimse_messages`` (its only
use there is the command set) by :func:`encode`, which hands anything else -- another
transfer syntax, an element outside group 0000, a VR or value it does not know -- to
pynetdicom's own ``dsutils.encode``. Written for pynetdicom 3.0.x: :func:`install`
refuses to run if the name it replaces is not pynetdicom's ``dsutils.encode``.
"""

from __future__ import annotations

import struct

import pynetdicom.dimse_messages
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as pynetdicom_encode

from compacs.net.dimse_wire import UnknownValue, value_bytes
from compacs.net.event_reactor import UnsupportedPynetdicom


def encode_command_set(ds: Dataset) -> bytes:
    """``ds`` (group 0000 elements only) in Implicit VR Little Endian; UnknownValue
    otherwise."""
    out = []
    for element in ds.elements():  # in tag order, as pydicom writes them
        tag = int(element.tag)
        if tag >> 16 != 0x0000:
            raise UnknownValue(hex(tag))
        value = value_bytes(str(element.VR), element.value)
        out.append(struct.pack("<HHI", 0x0000, tag & 0xFFFF, len(value)))
        out.append(value)
    return b"".join(out)


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``dsutils.encode``, fast for a command set, the same for the rest."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return encode_command_set(ds)
        except (UnknownValue, struct.error, UnicodeEncodeError, TypeError, ValueError):
            pass
    return pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    """Use :func:`encode` for pynetdicom's DIMSE messages (once; idempotent)."""
    current = getattr(pynetdicom.dimse_messages, "encode", None)
    if current is encode:
        return
    if current is not pynetdicom_encode:
        raise UnsupportedPynetdicom(
            "pynetdicom.dimse_messages.encode is not dsutils.encode: compacs's command set "
            "encoder (net/command_set.py) was written for pynetdicom 3.0.x"
        )
    pynetdicom.dimse_messages.encode = encode  # type: ignore[attr-defined]  # its own binding of dsutils.encode, replaced
