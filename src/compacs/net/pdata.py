"""A DIMSE message's P-DATA-TF PDUs handed to the DUL together, sent in one socket write.

pynetdicom sends a message as one P-DATA primitive per fragment (``dimse.py`` ``send_msg``:
``for pdata in encode_msg(...): dul.send_pdu(pdata)``), and its DUL thread takes each from
its queue, runs the state machine (PS3.8 9.2, Sta6 + Evt9 -> DT-1 -> Sta6), builds a
``P_DATA_TF`` object, encodes it and writes it: for a 190 KB JPEG-LS C-STORE-RQ to a peer
accepting 16 KB PDUs that is a dozen round trips through queue, wake-up, state machine and
encoder, ~1.5 ms of Python per sub-operation of a C-MOVE (issue 15: C-MOVE as stored was
3.2x Orthanc-JLS's time with the data set bytes already prepared).

Here :class:`CoalescingDIMSE` (bound to every association by
:func:`compacs.net.event_reactor.make_event_driven`) writes the message's PDUs itself --
the same fragments pynetdicom's ``encode_msg`` makes, each a P-DATA-TF of one PDV no
longer than the peer's Maximum Length (PS3.8 9.3.5, D.1) -- and gives the DUL one P-DATA
primitive per :data:`BATCH` bytes whose single PDV value is a :class:`WireBytes`: the
encoded PDUs. ``EventDrivenDUL._send`` writes those bytes as they are. The state machine
still sees a P-DATA request for each batch, in order, from the same queue, so what it
checks (the association's state, an abort meanwhile) is unchanged.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_dimse_sent_handler
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from compacs.net.dimse_wire import command_bytes, store_response

BATCH = 1 << 18
"""Bytes of encoded PDUs per primitive, about: a large message is not held twice whole,
and pynetdicom's socket write, which copies what is left after a partial send, copies
little."""


class WireBytes(bytes):
    """Complete encoded P-DATA-TF PDUs, carried as the value of a P-DATA primitive's
    only PDV and written to the socket as they are."""


def p_data_tf(context_id: int, pdv: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5, 9.3.5.1): ``pdv`` is the message
    control header (PS3.8 E.2) followed by the fragment, as in pynetdicom's P_DATA."""
    return struct.pack(">BBIIB", 0x04, 0x00, len(pdv) + 5, len(pdv) + 1, context_id) + pdv


def wire_batches(fragments: Any, context_id: int, batch: int = BATCH) -> Any:
    """The PDUs of ``fragments`` (pynetdicom P_DATA primitives of one PDV each) joined
    into :class:`WireBytes` of about ``batch`` bytes each, in order."""
    parts: list[bytes] = []
    size = 0
    for pdata in fragments:
        for item_context, pdv in pdata.presentation_data_value_list:
            pdu = p_data_tf(item_context, pdv)
            parts.append(pdu)
            size += len(pdu)
        if size >= batch:
            yield WireBytes(b"".join(parts))
            parts, size = [], 0
    if parts:
        yield WireBytes(b"".join(parts))


def message_batches(
    command: bytes, data_set: Any, context_id: int, max_pdu: int, batch: int = BATCH
) -> Iterator[WireBytes]:
    """A DIMSE message's P-DATA-TF PDUs, byte for byte what pynetdicom's ``encode_msg`` +
    :func:`wire_batches` make -- the command set, then the data set (a bytes-like object
    or None), each in fragments of at most ``max_pdu - 6`` bytes (0: one fragment), one
    PDV per PDU with message control headers 0x01/0x03 and 0x00/0x02 (PS3.8 E.2) -- in
    :class:`WireBytes` of about ``batch`` bytes. The data set is sliced through a
    memoryview: its bytes are copied once, into the batch."""
    parts: list[bytes | memoryview] = []
    size = 0
    for control, payload in ((0x01, command), (0x00, data_set)):
        if payload is None:
            continue
        view = memoryview(payload).cast("B")
        step = max_pdu - 6 if max_pdu else max(len(view), 1)
        for start in range(0, len(view), step):
            fragment = view[start : start + step]
            last = start + step >= len(view)
            header = struct.pack(
                ">BBIIBB",
                0x04,
                0x00,
                len(fragment) + 6,
                len(fragment) + 2,
                context_id,
                control | (0x02 if last else 0x00),
            )
            parts += (header, fragment)
            size += len(header) + len(fragment)
            if size >= batch:
                yield WireBytes(b"".join(parts))
                parts, size = [], 0
    if parts:
        yield WireBytes(b"".join(parts))


_STANDARD = {
    evt.EVT_DIMSE_SENT: standard_dimse_sent_handler,
    evt.EVT_DIMSE_RECV: standard_dimse_recv_handler,
}
_PYNETDICOM_LOG = logging.getLogger("pynetdicom")
_LOG = logging.getLogger(__name__)
_LAST_COMMAND = frozenset(bytes([b]) for b in range(256) if b & 0x03 == 0x03)
"""Message control headers of a command's last fragment (PS3.8 E.2: the two low bits)."""


@dataclass(frozen=True)
class Summary:
    """What an observer of EVT_DIMSE_SENT/RECV is told of a message written or read here
    without pydicom, in place of the event (whose ``message`` would have to be built)."""

    message: str
    """pynetdicom's name of the message class: ``C_STORE_RSP``, ``C_MOVE_RSP``, ..."""
    status: int | None = None
    error_comment: str | None = None


def unobserved(assoc: Any, event: Any) -> bool:
    """Whether every handler bound to ``event`` (EVT_DIMSE_SENT/RECV) is pynetdicom's
    standard logging handler, logging nothing (it logs at DEBUG), or takes a
    :class:`Summary` (it has ``on_summary``): then a message need not be built as a
    pydicom data set only for the event."""
    if _PYNETDICOM_LOG.isEnabledFor(logging.DEBUG):
        return False
    return all(
        handler is _STANDARD[event] or hasattr(handler, "on_summary")
        for handler, _ in assoc.get_handlers(event)
    )


def tell(assoc: Any, event: Any, summary: Summary) -> None:
    """Hand ``summary`` to the handlers of ``event`` that take one; what one raises is
    logged, as pynetdicom does for a notification handler."""
    for handler, _ in assoc.get_handlers(event):
        on_summary = getattr(handler, "on_summary", None)
        if on_summary is not None:
            try:
                on_summary(assoc, summary)
            except Exception:
                _LOG.exception("Exception in handler bound to '%s'", event.name)


def _summary(primitive: Any) -> Summary:
    """The :class:`Summary` of a primitive sent."""
    kind = "RQ" if primitive.MessageIDBeingRespondedTo is None else "RSP"
    return Summary(
        f"{type(primitive).__name__}_{kind}",
        getattr(primitive, "Status", None),
        getattr(primitive, "ErrorComment", None),
    )


def _primitive(context_id: int, wire: WireBytes) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, wire]]  # type: ignore[list-item]  # as pynetdicom builds them
    return primitive


class CoalescingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider whose ``send_msg`` gives the DUL a message's PDUs in
    batches (module docstring), and which writes and reads the command sets of a
    retrieve's sub-operations without pydicom (net/dimse_wire.py) when no one observes
    the DIMSE events; the rest unchanged."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = command_bytes(primitive)
        if command is not None and unobserved(self.assoc, evt.EVT_DIMSE_SENT):
            tell(self.assoc, evt.EVT_DIMSE_SENT, _summary(primitive))
            request = isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is None
            data_set = primitive.DataSet.getvalue() if request else None
            for wire in message_batches(command, data_set, context_id, self.maximum_pdu_size):
                self.dul.send_pdu(_primitive(context_id, wire))
            return
        if primitive.MessageIDBeingRespondedTo is None:
            dimse_msg = _RQ_TO_MESSAGE[primitive.__class__]()
        else:
            dimse_msg = _RSP_TO_MESSAGE[primitive.__class__]()
        dimse_msg.primitive_to_message(primitive)
        dimse_msg.context_id = context_id
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": dimse_msg})
        fragments = dimse_msg.encode_msg(context_id, self.maximum_pdu_size)
        for wire in wire_batches(fragments, context_id):
            self.dul.send_pdu(_primitive(context_id, wire))

    def receive_primitive(self, primitive: Any) -> None:
        """pynetdicom's, except that a C-STORE-RSP arriving whole in one PDV is read by
        :func:`compacs.net.dimse_wire.store_response` (when no one observes EVT_DIMSE_RECV)
        and queued like the primitive pynetdicom's decoder makes."""
        values = primitive.presentation_data_value_list
        if self.message is None and len(values) == 1 and values[0][1][:1] in _LAST_COMMAND:
            context_id, pdv = values[0]
            response = store_response(pdv[1:])
            if response is not None and unobserved(self.assoc, evt.EVT_DIMSE_RECV):
                summary = Summary("C_STORE_RSP", response.Status, response.ErrorComment)
                tell(self.assoc, evt.EVT_DIMSE_RECV, summary)
                response._context_id = context_id
                self.msg_queue.put((context_id, response))
                return
        super().receive_primitive(primitive)


def wire_of(pdu: Any) -> WireBytes | None:
    """The encoded PDUs a P_DATA_TF made from a :class:`CoalescingDIMSE` primitive carries,
    else None (any other PDU: pynetdicom encodes it)."""
    items = getattr(pdu, "presentation_data_value_items", None)
    if items and len(items) == 1 and isinstance(items[0].presentation_data_value, WireBytes):
        return items[0].presentation_data_value
    return None
