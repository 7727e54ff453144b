"""Storage Service Class SCP (PS3.4 Annex B): C-STORE, handed straight to ingest.

The handler takes the encoded data set as the peer sent it (no decoding of pixel data,
pynetdicom's ``encoded_dataset``) and turns the ingest outcome into a response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from compacs import metrics
from compacs.dicom.status import category, error_comment
from compacs.ingest import Ingest, Received
from compacs.net import Handler


def make_store_handler(ingest: Ingest) -> Callable[[Event], Dataset]:
    def handle_store(event: Event) -> Dataset:
        request = cast(C_STORE, event.request)
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
        metrics.STORES.inc(outcome=category(outcome.status).value)
        if outcome.ok:
            metrics.BYTES_RECEIVED.inc(len(received.dataset))
        response = Dataset()
        response.Status = int(outcome.status)
        if outcome.comment:
            response.ErrorComment = error_comment(outcome.comment)
        return response

    return handle_store


def handlers(ingest: Ingest) -> list[Handler]:
    return [(evt.EVT_C_STORE, make_store_handler(ingest))]
