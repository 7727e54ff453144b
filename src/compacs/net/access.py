"""Access control at the association and at each operation (see compacs.security)."""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event, EventType

from compacs import metrics
from compacs.dicom.status import Status, describe
from compacs.net import Handler
from compacs.net.retrieve import MOVE_MODELS
from compacs.security import AccessControl

log = logging.getLogger(__name__)

REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED = 0x01, 0x01, 0x03  # PS3.8 9.3.4


def peer(event: Event) -> tuple[str, str]:
    """(calling AE title, address) of the association's requestor (from its A-ASSOCIATE-RQ:
    at EVT_REQUESTED the association does not know the title yet)."""
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    calling = requestor.ae_title or str(primitive.calling_ae_title if primitive else "")
    return calling.strip(), str(requestor.address)


def permitted(access: AccessControl, event: Event, operation: str) -> bool:
    if not access.enabled:
        return True
    calling, address = peer(event)
    if operation in access.allowed(calling, address):
        return True
    refusal = describe(Status.NOT_AUTHORIZED)
    log.warning("%s from %s@%s refused: %s", operation, calling, address, refusal)
    return False


def _refusal() -> Dataset:
    ds = Dataset()
    ds.ErrorComment = "not authorized for this calling AE"
    return ds


def _refuse(kind: str) -> Any:
    """What a refusing handler of this kind returns or yields."""
    if kind == "find":
        return iter([(Status.NOT_AUTHORIZED, _refusal())])
    if kind == "get":  # pynetdicom wants the number of sub-operations first
        return iter([1, (Status.NOT_AUTHORIZED, _refusal())])
    if kind == "commit":
        return Status.NOT_AUTHORIZED, None
    response = Dataset()
    response.Status = int(Status.NOT_AUTHORIZED)
    return response


GUARDED: dict[EventType, str] = {
    evt.EVT_C_ECHO: "echo",
    evt.EVT_C_STORE: "store",
    evt.EVT_C_FIND: "find",
    evt.EVT_C_GET: "get",
    evt.EVT_N_ACTION: "commit",
    # a destination's Storage Commitment report (PS3.4 J.3.3) needs the same right
    evt.EVT_N_EVENT_REPORT: "commit",
}


def guarded(access: AccessControl, bound: list[Handler]) -> list[Handler]:
    """The service handlers, each refusing (0x0124) an operation the AE may not use."""
    if not access.enabled:
        return bound
    out = []
    for event_type, handler in bound:
        operation = GUARDED.get(event_type)
        if operation is None:
            out.append((event_type, handler))
            continue

        def guard(event: Event, handler: Any = handler, operation: str = operation) -> Any:
            if permitted(access, event, operation):
                return handler(event)
            return _refuse(operation)

        out.append((event_type, guard))
    return out


def handlers(access: AccessControl) -> list[Handler]:
    def on_requested(event: Event) -> None:
        if not access.enabled:
            return
        calling, address = peer(event)
        if not access.admits(calling, address):
            log.warning("association from %s@%s rejected: calling AE not allowed", calling, address)
            event.assoc.acse.send_reject(
                REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED
            )
            event.assoc.kill()  # as pynetdicom's own rejection: wait until the RJ is sent
            metrics.ASSOCIATIONS.inc(outcome="rejected")
            return
        if "move" not in access.allowed(calling, address):
            # pynetdicom sends a C-MOVE response only after reaching the destination: an
            # AE that may not move gets no C-MOVE context instead
            acceptor = event.assoc.acceptor
            acceptor.supported_contexts = [
                cx for cx in acceptor.supported_contexts if cx.abstract_syntax not in MOVE_MODELS
            ]

    return [(evt.EVT_REQUESTED, on_requested)]
