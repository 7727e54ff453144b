"""Storage Service Class SCP (PS3.4 Annex B): C-STORE, handed straight to ingest.

The handler takes the encoded data set as the peer sent it (no decoding of pixel data,
pynetdicom's ``encoded_dataset``) and turns the ingest outcome into a response.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from compacs import metrics
from compacs.ingest import Ingest, Received


def make_store_handler(ingest: Ingest):
    def handle_store(event: Event) -> Dataset:
        request = event.request
        assoc = event.assoc
        received = Received(
            dataset=event.encoded_dataset(include_meta=False),
            transfer_syntax=str(event.context.transfer_syntax),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
        )
        outcome = ingest.receive(received)
        metrics.STORES.inc(outcome=_category(outcome.status))
        if outcome.ok:
            metrics.BYTES_RECEIVED.inc(len(received.dataset))
        response = Dataset()
        response.Status = int(outcome.status)
        if outcome.comment:
            response.ErrorComment = outcome.comment[:64]  # LO, PS3.7 C.4.2
        return response

    return handle_store


def _category(status: int) -> str:
    """PS3.7 C.1.2: 0x0000 success, 0xB000-0xBFFF (and 0x0001, 0x0107, 0x0116) warning."""
    if status == 0x0000:
        return "success"
    if 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116):
        return "warning"
    return "failure"


def handlers(ingest: Ingest):
    return [(evt.EVT_C_STORE, make_store_handler(ingest))]
