"""The command sets of the busiest messages, written and read without pydicom.

Each C-MOVE or C-GET sub-operation costs three command sets (PS3.7 9.3.1, 9.3.3, 9.3.4):
the C-STORE-RQ sent to the destination, its C-STORE-RSP, and the pending C-MOVE/C-GET-RSP
sent back to the requestor; each C-STORE received, the C-STORE-RSP the node sends back.
pynetdicom builds each as a pydicom Dataset, from the
primitive (``DIMSEMessage.primitive_to_message``) or from the received bytes
(``dsutils.decode`` + ``message_to_primitive``), ~100-180 us of Python apiece (issue 15's
profile of C-MOVE "as stored"). A command set holds a handful of group 0000 elements in
Implicit VR Little Endian (PS3.7 6.3.1, E.1), so for these three messages they are
written from the primitive and read into the primitive here:

- :func:`command_bytes`: a C-STORE-RQ, a C-STORE-RSP with at most an Error Comment, or
  a C-MOVE/C-GET-RSP without an identifier and without status comments, as the bytes
  pynetdicom's encoder writes (tests compare the two); None for anything else, which
  pynetdicom encodes as before;
- :func:`store_response`: a received C-STORE-RSP command set (Status, Message ID Being
  Responded To, Affected SOP Class/Instance UID, an optional Error Comment) as the
  ``C_STORE`` primitive pynetdicom's decoder makes of it; None for anything else
  (another command, another element, an odd length, a value it does not read exactly as
  pydicom does), which pynetdicom decodes as before.

Written for pynetdicom 3.0.x (the primitives' attribute names, pinned by
tests/test_retrieve_wire.py against pynetdicom's own encoder and decoder).
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pydicom.multival import MultiValue
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
_TEXT_VRS = frozenset({"AE", "CS", "LO", "SH", "ST", "LT"})
_STATUS_COMMENTS = ("ErrorComment", "OffendingElement", "ErrorID", "AttributeIdentifierList")
DATA_SET_PRESENT = 0x0001  # what pynetdicom writes; PS3.7 E.1: anything but 0x0101
NO_DATA_SET = 0x0101

# (tag, VR, primitive attribute) in tag order: PS3.7 9.3.1.1 (C-STORE-RQ), 9.3.3.2
# (C-GET-RSP), 9.3.4.2 (C-MOVE-RSP); Command Field and Command Data Set Type are written
# from the message kind.
_STORE_RQ = (
    (0x0002, "UI", "AffectedSOPClassUID"),
    (0x0100, "US", None),
    (0x0110, "US", "MessageID"),
    (0x0700, "US", "Priority"),
    (0x0800, "US", None),
    (0x1000, "UI", "AffectedSOPInstanceUID"),
    (0x1030, "AE", "MoveOriginatorApplicationEntityTitle"),
    (0x1031, "US", "MoveOriginatorMessageID"),
)
_STORE_RSP = (  # PS3.7 9.3.1.2
    (0x0002, "UI", "AffectedSOPClassUID"),
    (0x0100, "US", None),
    (0x0120, "US", "MessageIDBeingRespondedTo"),
    (0x0800, "US", None),
    (0x0900, "US", "Status"),
    (0x0902, "LO", "ErrorComment"),
    (0x1000, "UI", "AffectedSOPInstanceUID"),
)
_RETRIEVE_RSP = (
    (0x0002, "UI", "AffectedSOPClassUID"),
    (0x0100, "US", None),
    (0x0120, "US", "MessageIDBeingRespondedTo"),
    (0x0800, "US", None),
    (0x0900, "US", "Status"),
    (0x1020, "US", "NumberOfRemainingSuboperations"),
    (0x1021, "US", "NumberOfCompletedSuboperations"),
    (0x1022, "US", "NumberOfFailedSuboperations"),
    (0x1023, "US", "NumberOfWarningSuboperations"),
)


class UnknownValue(Exception):
    """A value :func:`value_bytes` does not write: pydicom's writer takes the whole set."""


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def value_bytes(vr: str, value: Any) -> bytes:
    """The value field of one command element as pydicom writes it, padded to even length
    (PS3.5 7.1.1, 6.2); UnknownValue for a VR or value it does not write."""
    values = _values(value)
    if vr == "UL":
        return struct.pack(f"<{len(values)}I", *values)
    if vr == "US":
        return struct.pack(f"<{len(values)}H", *values)
    if vr == "AT":
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)
    if vr == "UI" or vr in _TEXT_VRS:
        if not all(isinstance(v, str) for v in values):
            raise UnknownValue(vr)
        text = "\\".join(values).encode("ascii")  # UnicodeEncodeError: pydicom's way
        pad = b"\0" if vr == "UI" else b" "
        return text + pad if len(text) % 2 else text
    raise UnknownValue(vr)


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def _command(
    layout: tuple[tuple[int, str, str | None], ...], primitive: Any, field: int, data_set_type: int
) -> bytes:
    """The command set, Command Group Length first (PS3.7 E.1); TypeError (or a
    UnicodeEncodeError) for a value this writer would not write exactly as pydicom does."""
    body = []
    for tag, vr, attribute in layout:
        if attribute is None:
            value: Any = field if tag == 0x0100 else data_set_type
        else:
            value = getattr(primitive, attribute)
            if value is None:
                continue
        body.append(_element(tag, value_bytes(vr, value)))
    encoded = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(encoded))) + encoded


def _data_set_type(data_set: Any) -> int | None:
    """0x0101 for no data set, 0x0001 for a BytesIO holding one; None otherwise (an empty
    BytesIO, a file path: pynetdicom's way)."""
    if data_set is None:
        return NO_DATA_SET
    if isinstance(data_set, BytesIO) and data_set.getvalue():
        return DATA_SET_PRESENT
    return None


def command_bytes(primitive: Any) -> bytes | None:
    """The command set of a C-STORE-RQ, of a C-STORE-RSP with no status comment but an
    Error Comment, or of a C-MOVE/C-GET-RSP without identifier or status comments, as
    pynetdicom writes it; None for anything else."""
    try:
        if type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is None:
            kind = _data_set_type(primitive.DataSet)
            if kind != DATA_SET_PRESENT or primitive._dataset_path is not None:
                return None
            return _command(_STORE_RQ, primitive, C_STORE_RQ, kind)
        if type(primitive) is C_STORE:
            if primitive.DataSet is not None or any(
                getattr(primitive, keyword, None) is not None
                for keyword in _STATUS_COMMENTS
                if keyword != "ErrorComment"
            ):
                return None
            return _command(_STORE_RSP, primitive, C_STORE_RSP, NO_DATA_SET)
        if type(primitive) in (C_MOVE, C_GET) and primitive.MessageIDBeingRespondedTo is not None:
            if primitive.Identifier is not None or any(
                getattr(primitive, keyword, None) is not None for keyword in _STATUS_COMMENTS
            ):
                return None
            field = C_MOVE_RSP if type(primitive) is C_MOVE else C_GET_RSP
            return _command(_RETRIEVE_RSP, primitive, field, NO_DATA_SET)
    except (UnknownValue, struct.error, UnicodeEncodeError, TypeError, ValueError):
        return None
    return None


# -- reading a C-STORE-RSP -------------------------------------------------------------

_UI_TEXT = frozenset(b"0123456789.")
_LO_TEXT = frozenset(range(0x20, 0x7F)) - {ord("\\")}
_US_TAGS = {0x0100, 0x0120, 0x0800, 0x0900}
_UID_TAGS = {0x0002: "AffectedSOPClassUID", 0x1000: "AffectedSOPInstanceUID"}
_ERROR_COMMENT = 0x0902


def command_elements(raw: bytes) -> dict[int, bytes] | None:
    """The group 0000 elements of an Implicit VR LE command set (PS3.7 6.3.1), element
    number -> value; None when it is not a plain run of such elements, in ascending tag
    order, each of even length, filling ``raw`` exactly (PS3.5 7.1, 7.5: no repeats)."""
    out: dict[int, bytes] = {}
    offset, size, last = 0, len(raw), -1
    while offset < size:
        if size - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", raw, offset)
        offset += 8
        if group != 0x0000 or element <= last or length % 2 or length > size - offset:
            return None
        out[element] = raw[offset : offset + length]
        offset += length
        last = element
    return out


def _uid(value: bytes) -> str | None:
    """A UI value as pydicom reads it (trailing NUL padding dropped); None when it holds
    anything but digits and dots, so nothing pydicom would read differently."""
    text = value[:-1] if value.endswith(b"\0") else value
    if not text or not set(text) <= _UI_TEXT:
        return None
    return text.decode("ascii")


def _error_comment(value: bytes) -> str | None:
    """An LO Error Comment as pydicom reads it (PS3.5 6.2: trailing spaces dropped, here
    leading ones kept as pydicom 3.0 keeps them); None for characters outside printable
    ASCII (a character set question: pydicom's decoder)."""
    if not set(value) <= _LO_TEXT:
        return None
    return value.rstrip(b" ").decode("ascii")


def store_response(raw: bytes) -> C_STORE | None:
    """The C-STORE-RSP primitive of a complete command set (PS3.7 9.3.1.2), without data
    set; None for any other command or anything unusual (pynetdicom decodes those)."""
    elements = command_elements(raw)
    if elements is None or not elements.keys() <= {0x0000, *_US_TAGS, *_UID_TAGS, _ERROR_COMMENT}:
        return None
    if elements.get(0x0000) != struct.pack("<I", len(raw) - 12):
        return None
    if any(len(elements.get(tag, b"")) != 2 for tag in _US_TAGS):
        return None
    us = {tag: struct.unpack("<H", elements[tag])[0] for tag in _US_TAGS}
    if us[0x0100] != C_STORE_RSP or us[0x0800] != NO_DATA_SET:
        return None
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = us[0x0120]
    primitive.Status = us[0x0900]
    for tag, attribute in _UID_TAGS.items():
        if tag in elements:
            uid = _uid(elements[tag])
            if uid is None:
                return None
            setattr(primitive, attribute, uid)
    if _ERROR_COMMENT in elements:
        comment = _error_comment(elements[_ERROR_COMMENT])
        if comment is None:
            return None
        primitive.ErrorComment = comment  # type: ignore[assignment]  # pynetdicom 3.0 annotates None
    return primitive
