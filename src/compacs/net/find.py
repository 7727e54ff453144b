"""Query/Retrieve C-FIND SCP (PS3.4 C.4.1): identifiers answered from the index only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from compacs.dicom.status import Status
from compacs.index import Index
from compacs.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    QueryError,
    parse_identifier,
    response_identifier,
)

log = logging.getLogger(__name__)

MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
}


def find(
    index: Index,
    identifier: Dataset,
    model: str,
    ae_title: str,
    pn_case_insensitive: bool,
    is_cancelled: Any = lambda: False,
) -> Iterator[tuple[int, Dataset | None]]:
    """The C-FIND responses for ``identifier``: pending matches, then a final status."""
    try:
        query = parse_identifier(identifier, model, pn_case_insensitive=pn_case_insensitive)
    except QueryError as exc:
        log.warning("C-FIND refused (0x%04X): %s", exc.status, exc.comment)
        failure = Dataset()
        failure.ErrorComment = exc.comment[:64]
        yield exc.status, failure
        return
    status = Status.PENDING_WARNING if query.unsupported else Status.PENDING
    for row in index.find(query):
        if is_cancelled():
            yield Status.CANCEL, None
            return
        yield status, response_identifier(query, row, identifier, ae_title)


def handlers(index: Index, ae_title: str, pn_case_insensitive: bool):
    def handle_find(event: Event):
        model = MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            identifier = event.identifier
        except Exception as exc:  # an identifier pydicom cannot decode
            failure = Dataset()
            failure.ErrorComment = f"identifier cannot be decoded: {exc}"[:64]
            yield Status.CANNOT_UNDERSTAND, failure
            return
        yield from find(
            index, identifier, model, ae_title, pn_case_insensitive, lambda: event.is_cancelled
        )

    return [(evt.EVT_C_FIND, handle_find)]
