"""C-FIND pending responses written directly: identifier, command set and one P-DATA-TF.

pynetdicom sends each pending C-FIND response by building the identifier as a pydicom
Dataset (~90 us), encoding it with pydicom's writer (~85 us), building a DIMSE message
whose command set is another Dataset (~110 us), and handing the command and the
identifier to its DUL as two P-DATA-TF PDUs, two socket sends (profile of a 200-match
C-FIND IMAGE, issue 15). Here a pending response is

- the identifier, encoded from the index's values (:func:`compacs.query.response_elements`)
  by :func:`encode_identifier`, byte for byte what pydicom writes for the same Dataset
  (:func:`compacs.query.identifier_dataset`; tests/test_find_wire.py compares the two);
- the C-FIND-RSP command set (PS3.7 9.3.2.2, Implicit VR Little Endian, PS3.7 6.3.1) written
  by :func:`pending_command`, the same bytes pynetdicom writes;
- both as two PDVs (command, then data set: PS3.8 E.2 message control headers 0x03, 0x02)
  of one P-DATA-TF PDU (PS3.8 9.3.5: "one or more" PDV items) when they fit the peer's
  maximum PDU length (PS3.8 D.1), given to the DUL like any other P-DATA, so its state
  machine (PS3.8 9.2, DT-1) sends it.

pynetdicom's DUL reads from the peer only when it has nothing to send (``dul.py``
``run_reactor``: "either encode and send a primitive OR receive and decode a PDU per
loop"): a responder that queued responses faster than the DUL sends them would leave a
C-CANCEL unread until the whole answer had gone. So the responder stays at most
:data:`AHEAD` P-DATA primitives ahead of the DUL (waiting on the queue's own condition,
notified at each ``get``), and when the peer has sent something (the socket is readable)
it lets the DUL empty its queue and read it before the next response: a C-CANCEL is seen
within a response or two (PS3.4 C.4.1.2.3).

Whatever this does not write -- another transfer syntax, a VR, value or character it
does not know, a PDU too small for both PDVs -- :class:`PendingResponder` declines, and the
caller yields the Dataset to pynetdicom, which answers as before. Pending responses sent
here do not pass through pynetdicom's ``send_msg``: no EVT_DIMSE_SENT for them and no
per-response log lines (the final response still has both).
"""

from __future__ import annotations

import re
import select
import struct
import time
from collections.abc import Iterable
from typing import Any

from pynetdicom.pdu_primitives import P_DATA

from compacs.dicom.attributes import CHARSET_VRS
from compacs.dicom.part10 import LONG_LENGTH_VRS
from compacs.dicom.syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from compacs.query import ResponseElement

# PS3.5 6.2: the VRs of the Default Character Repertoire only
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
# PS3.5 6.2, IS: at most 12 bytes, an integer in [-2**31, 2**31 - 1]
_IS_TEXT = re.compile(r" *[+-]?[0-9]+ *")
_IS_RANGE = range(-(2**31), 2**31)
_SPECIFIC_CHARACTER_SET = 0x00080005
_UTF8 = "ISO_IR 192"
AHEAD = 4
"""P-DATA primitives a responder may have queued for the DUL before it waits."""
_PEER_INPUT_WAIT = 2.0
"""Seconds a responder waits at most for the DUL to read what the peer sent."""


class Unencodable(Exception):
    """An element :func:`encode_identifier` does not write: pydicom's writer does."""


def _strings(value: Any) -> list[str]:
    values = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, str) for v in values):
        raise Unencodable(type(value).__name__)
    return [part for v in values for part in v.split("\\")]


def _is_text(value: Any) -> str:
    """An IS value as pydicom writes it: an int in full, a valid string without its
    leading and trailing spaces (PS3.5 6.2: they are not significant)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in _IS_RANGE:
            raise Unencodable("IS out of range")
        return str(value)
    parts = _strings(value)
    for part in parts:
        if len(part) > 12 or not _IS_TEXT.fullmatch(part) or int(part) not in _IS_RANGE:
            raise Unencodable("IS")
    return "\\".join(part.strip(" ") for part in parts)


def _value_bytes(vr: str, value: Any, utf8: bool) -> bytes:
    """The value field of one element, padded to even length (PS3.5 7.1.1, 6.2)."""
    if value is None:
        return b""
    if vr == "SQ":
        if value != []:
            raise Unencodable("a sequence with items")
        return b""
    if vr == "US":
        values = value if isinstance(value, list | tuple) else [value]
        if not all(type(v) is int and 0 <= v <= 0xFFFF for v in values):
            raise Unencodable("US")
        return struct.pack(f"<{len(values)}H", *values)
    if vr == "IS":
        raw = _is_text(value).encode("ascii")
    elif vr in _ASCII_VRS:
        raw = "\\".join(_strings(value)).encode("ascii")  # else UnicodeEncodeError
    elif vr in CHARSET_VRS:
        raw = "\\".join(_strings(value)).encode("utf-8" if utf8 else "ascii")
    else:
        raise Unencodable(vr)
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def encode_identifier(elements: Iterable[ResponseElement], implicit_vr: bool) -> bytes:
    """``elements`` (in tag order, no group 0000/0002) as a Little Endian data set;
    :class:`Unencodable` for anything it does not write exactly as pydicom does."""
    out = []
    utf8 = False
    for tag, vr, value in elements:
        if tag == _SPECIFIC_CHARACTER_SET:
            utf8 = value == _UTF8
        try:
            raw = _value_bytes(vr, value, utf8)
        except (UnicodeEncodeError, ValueError, struct.error) as exc:
            raise Unencodable(str(exc)) from exc
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit_vr:
            out.append(head + struct.pack("<I", len(raw)))
        elif vr in LONG_LENGTH_VRS:
            out.append(head + vr.encode("ascii") + struct.pack("<HI", 0, len(raw)))
        elif len(raw) <= 0xFFFF:
            out.append(head + vr.encode("ascii") + struct.pack("<H", len(raw)))
        else:
            raise Unencodable(f"{vr} of {len(raw)} bytes")
        out.append(raw)
    return b"".join(out)


def pending_command(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """A C-FIND-RSP command set with an identifier (PS3.7 9.3.2.2, E.1), Implicit VR LE:
    Command Group Length, Affected SOP Class UID, Command Field 0x8020, Message ID Being
    Responded To, Command Data Set Type 0x0001 (present), Status."""
    uid = sop_class_uid.encode("ascii")
    uid += b"\0" if len(uid) % 2 else b""
    body = b"".join(
        (
            struct.pack("<HHI", 0x0000, 0x0002, len(uid)),
            uid,
            struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x8020),
            struct.pack("<HHIH", 0x0000, 0x0120, 2, message_id),
            struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0001),
            struct.pack("<HHIH", 0x0000, 0x0900, 2, status),
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def pending_pdvs(
    context_id: int, command: bytes, identifier: bytes, max_pdu: int
) -> list[list[Any]] | None:
    """Command and identifier as the two last-fragment PDVs of one P-DATA-TF (PS3.8 E.2),
    or None when the PDU would exceed the peer's maximum length (0: unlimited, PS3.8 D.1)."""
    if max_pdu and (6 + len(command)) + (6 + len(identifier)) > max_pdu:
        return None
    return [[context_id, b"\x03" + command], [context_id, b"\x02" + identifier]]


class PendingResponder:
    """Sends the pending responses of one C-FIND request (the EVT_C_FIND ``event``) on its
    association; ``respond()`` returns False for what it leaves to pynetdicom."""

    def __init__(self, event: Any) -> None:
        self._assoc = event.assoc
        context = event.context
        self._context_id = int(context.context_id)
        syntax = str(context.transfer_syntax)
        implicit = {IMPLICIT_VR_LITTLE_ENDIAN: True, EXPLICIT_VR_LITTLE_ENDIAN: False}
        self._implicit: bool | None = implicit.get(syntax)
        request = event.request
        self._sop_class = str(request.AffectedSOPClassUID)
        self._message_id = int(request.MessageID)
        self._commands: dict[int, bytes] = {}

    def respond(self, status: int, elements: list[ResponseElement]) -> bool:
        """Send one pending response; False (nothing sent) when it cannot be sent here."""
        assoc = self._assoc
        if self._implicit is None or not assoc.is_established:
            return False
        try:
            identifier = encode_identifier(elements, self._implicit)
        except Unencodable:
            return False
        command = self._commands.get(status)
        if command is None:
            command = self._commands[status] = pending_command(
                self._sop_class, self._message_id, status
            )
        pdvs = pending_pdvs(self._context_id, command, identifier, assoc.dimse.maximum_pdu_size)
        if pdvs is None:
            return False
        self._wait_for_dul()
        pdata = P_DATA()
        pdata.presentation_data_value_list = pdvs  # type: ignore[assignment]  # [id, bytes] lists, as pynetdicom builds them
        assoc.dul.send_pdu(pdata)
        return True

    def _wait_for_dul(self) -> None:
        """Stay :data:`AHEAD` primitives ahead of the DUL at most; when the peer has sent
        something, until the DUL has read it (it reads only with nothing to send)."""
        dul = self._assoc.dul
        queued = dul.to_provider_queue
        _wait_until(queued, AHEAD - 1)
        if not _readable(dul):
            return
        deadline = time.monotonic() + _PEER_INPUT_WAIT
        while _readable(dul) and self._assoc.is_established and time.monotonic() < deadline:
            _wait_until(queued, 0)
            time.sleep(0.0002)  # the DUL's turn to read: only while the peer's PDU waits


def _wait_until(queued: Any, size: int, timeout: float = 1.0) -> None:
    """Block until ``queued`` (a queue.Queue) holds at most ``size`` items; its
    ``not_full`` condition is notified at every ``get``."""
    if queued.qsize() <= size:
        return
    deadline = time.monotonic() + timeout
    with queued.not_full:
        while queued._qsize() > size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            queued.not_full.wait(left)


def _readable(dul: Any) -> bool:
    """Whether the peer has sent bytes the DUL has not read yet."""
    sock = getattr(dul.socket, "socket", None)
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False
