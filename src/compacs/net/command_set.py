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
from typing import Any

import pynetdicom.dimse_messages
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dsutils import encode as pynetdicom_encode

from compacs.net.event_reactor import UnsupportedPynetdicom

_TEXT_VRS = frozenset({"AE", "CS", "LO", "SH", "ST", "LT"})


class _Unknown(Exception):
    """An element this encoder does not write: pydicom's writer takes the whole set."""


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def _value_bytes(vr: str, value: Any) -> bytes:
    """The value field of one element, padded to even length (PS3.5 7.1.1, 6.2)."""
    values = _values(value)
    if vr == "UL":
        return struct.pack(f"<{len(values)}I", *values)
    if vr == "US":
        return struct.pack(f"<{len(values)}H", *values)
    if vr == "AT":
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)
    if vr == "UI" or vr in _TEXT_VRS:
        if not all(isinstance(v, str) for v in values):
            raise _Unknown(vr)
        text = "\\".join(values).encode("ascii")  # UnicodeEncodeError: pydicom's way
        pad = b"\0" if vr == "UI" else b" "
        return text + pad if len(text) % 2 else text
    raise _Unknown(vr)


def encode_command_set(ds: Dataset) -> bytes:
    """``ds`` (group 0000 elements only) in Implicit VR Little Endian; _Unknown otherwise."""
    out = []
    for element in ds.elements():  # in tag order, as pydicom writes them
        tag = int(element.tag)
        if tag >> 16 != 0x0000:
            raise _Unknown(hex(tag))
        value = _value_bytes(str(element.VR), element.value)
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
        except (_Unknown, struct.error, UnicodeEncodeError, TypeError, ValueError):
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
    pynetdicom.dimse_messages.encode = encode
