"""Query/Retrieve C-FIND SCP (PS3.4 C.4.1): identifiers answered from the index only.

Pending responses go out through :class:`compacs.net.find_wire.PendingResponder` (written
directly, one P-DATA-TF each); what it declines is yielded to pynetdicom as a Dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from compacs.dicom.status import Status, error_comment
from compacs.index import Catalogue
from compacs.net import Handler
from compacs.net.find_wire import PendingResponder
from compacs.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    QueryError,
    ResponseElement,
    identifier_dataset,
    parse_identifier,
    response_elements,
    response_plan,
)

log = logging.getLogger(__name__)

MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
}


def find(
    index: Catalogue,
    identifier: Dataset,
    model: str,
    ae_title: str,
    pn_case_insensitive: bool,
    is_cancelled: Any = lambda: False,
    respond: Callable[[int, list[ResponseElement]], bool] | None = None,
) -> Iterator[tuple[int, Dataset | None]]:
    """The C-FIND responses for ``identifier``: pending matches, then a final status.
    ``respond(status, elements)`` may send a pending response itself (True); those it
    does not are yielded. A C-CANCEL is honoured before each match (PS3.4 C.4.1.2.3)."""
    try:
        query = parse_identifier(identifier, model, pn_case_insensitive=pn_case_insensitive)
    except QueryError as exc:
        log.warning("C-FIND refused (0x%04X): %s", exc.status, exc.comment)
        failure = Dataset()
        failure.ErrorComment = error_comment(exc.comment)
        yield exc.status, failure
        return
    status = Status.PENDING_WARNING if query.unsupported else Status.PENDING
    plan = response_plan(query, identifier, ae_title)
    for row in index.find(query):
        if is_cancelled():
            yield Status.CANCEL, None
            return
        elements = response_elements(plan, row)
        if respond is None or not respond(status, elements):
            yield status, identifier_dataset(elements)


def handlers(index: Catalogue, ae_title: str, pn_case_insensitive: bool) -> list[Handler]:
    def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        model = MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            identifier = event.identifier
        except Exception as exc:  # an identifier pydicom cannot decode
            failure = Dataset()
            failure.ErrorComment = error_comment(f"identifier cannot be decoded: {exc}")
            yield Status.CANNOT_UNDERSTAND, failure
            return
        yield from find(
            index,
            identifier,
            model,
            ae_title,
            pn_case_insensitive,
            lambda: event.is_cancelled,
            PendingResponder(event).respond,
        )

    return [(evt.EVT_C_FIND, handle_find)]
