"""Query/Retrieve C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3).

The handlers stay thin: the index picks the instances (same matching as C-FIND), and
:func:`for_peer` turns each stored object into what the peer accepted: sent as stored
when its syntax was accepted, otherwise decompressed (or re-encoded into a syntax the
peer accepted, verified). A file that cannot be read or transcoded is one failed
sub-operation, never a stale data set (the defect of pynetdicom's qrscp example).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from compacs.codecs.convert import convert
from compacs.codecs.table import CODECS
from compacs.codecs.transcode import NATIVE_SYNTAXES
from compacs.config import Peer
from compacs.dicom.status import Status
from compacs.index import Index, InstanceFacts
from compacs.net.sender import StoredFile
from compacs.net.server import REQUESTOR_HANDLERS
from compacs.query import PATIENT_ROOT, STUDY_ROOT, QueryError, parse_identifier
from compacs.storage import BlobStore

log = logging.getLogger(__name__)

MOVE_MODELS = {
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
}
GET_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
}
UNSENDABLE_SYNTAX = "1.2.840.10008.1.2.4.999.1"  # never negotiated: makes a sub-op fail


class NotAcceptable(ValueError):
    """No accepted transfer syntax can carry this object."""


def proposal(instances: list[InstanceFacts]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination (PS3.4 C.4.2.3.1): per SOP class, each
    stored syntax, then Explicit and Implicit VR Little Endian, each on a context of its
    own. An acceptor chooses one syntax per context in its own order (PS3.8 9.3.3.2), and
    many prefer Implicit VR, which loses the VRs of private attributes: offered apart,
    each is accepted on its own and :func:`for_peer` sends the stored syntax, else
    Explicit. More than 128 are split over several associations by
    :class:`compacs.net.sender.ArchiveAE`."""
    stored: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = stored.setdefault(inst["sop_class_uid"], [])
        if inst["transfer_syntax_stored"] not in syntaxes + list(NATIVE_SYNTAXES):
            syntaxes.append(inst["transfer_syntax_stored"])
    return [
        build_context(sop_class, [syntax])
        for sop_class, syntaxes in stored.items()
        for syntax in [*syntaxes, *NATIVE_SYNTAXES]
    ]


def accepted_syntaxes(assoc: Any) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


def choose_syntax(preference: list[str], accepted: set[str]) -> str | None:
    """The first of ``preference`` the peer accepted (None: none of them)."""
    return next((uid for uid in preference if uid in accepted), None)


def for_peer(data: bytes, stored: str, accepted: set[str]) -> Dataset:
    """The stored object ``data`` in a transfer syntax the peer accepted: as stored, else
    native, else re-encoded losslessly (compressed to compressed, verified)."""
    lossless = [c.transfer_syntax for c in CODECS if c.lossless]
    target = choose_syntax([stored, *NATIVE_SYNTAXES, *lossless], accepted)
    if target is None:
        raise NotAcceptable(f"the peer accepted none of {stored} or a syntax compacs can produce")
    return convert(data, target).dataset


def _failed_sub_operation(inst: InstanceFacts) -> Dataset:
    """A data set pynetdicom cannot send (no context for its syntax): it counts the
    sub-operation as failed and lists the SOP Instance UID (PS3.4 C.4.2.1.4.2)."""
    ds = Dataset()
    ds.SOPClassUID = inst["sop_class_uid"]
    ds.SOPInstanceUID = inst["sop_instance_uid"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UNSENDABLE_SYNTAX
    return ds


def sub_operations(
    store: BlobStore,
    instances: list[InstanceFacts],
    accepted: Callable[[], dict[str, set[str]]],
    is_cancelled: Callable[[], bool],
    *,
    stream: bool = False,
) -> Iterator[tuple[int, Dataset | None]]:
    """(status, data set) per instance for pynetdicom's retrieve loop; with ``stream``
    (C-MOVE through ArchiveAE) objects sent as stored are streamed from their files."""
    for inst in instances:
        if is_cancelled():
            yield Status.CANCEL, None
            return
        try:
            syntaxes = accepted().get(inst["sop_class_uid"], set())
            path = store.local_path(inst["storage_key"]) if stream else None
            if path is not None and inst["transfer_syntax_stored"] in syntaxes and path.is_file():
                # sent as stored, streamed from the file without a decode
                stored = StoredFile(path, inst["sop_class_uid"], inst["sop_instance_uid"])
                yield Status.PENDING, stored
                continue
            data = store.get(inst["storage_key"])
            yield Status.PENDING, for_peer(data, inst["transfer_syntax_stored"], syntaxes)
        except Exception as exc:
            log.warning("sub-operation for %s failed: %s", inst["sop_instance_uid"], exc)
            yield Status.PENDING, _failed_sub_operation(inst)


def _query(index: Index, identifier: Dataset, model: str) -> list[InstanceFacts]:
    return index.matching_instances(parse_identifier(identifier, model))


def _refusal(exc: QueryError) -> Dataset:
    ds = Dataset()
    ds.ErrorComment = exc.comment[:64]
    return ds


def handlers(
    index: Index, store: BlobStore, peers: dict[str, Peer], move_allowed: Callable[[str, str], bool]
):
    def handle_move(event: Event):
        model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
        destination = str(event.move_destination or "").strip()
        calling = event.assoc.requestor.ae_title
        peer = peers.get(destination)
        if peer is None or not move_allowed(calling, destination):
            why = "unknown" if peer is None else f"not allowed for {calling}"
            log.warning("C-MOVE to %r refused: destination %s (0xA801)", destination, why)
            yield None, None
            return
        try:
            instances = _query(index, event.identifier, model)
        except QueryError as exc:
            # pynetdicom insists on a destination association before any status
            yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
            yield 1
            yield exc.status, _refusal(exc)
            return
        options = {"contexts": proposal(instances) or None, "evt_handlers": REQUESTOR_HANDLERS}
        yield peer.host, peer.port, options
        yield len(instances)
        # pynetdicom requested the sub-association(s) from this thread, through ArchiveAE
        sub_association = event.assoc.ae.last_requested()
        yield from sub_operations(
            store,
            instances,
            lambda: accepted_syntaxes(sub_association),
            lambda: event.is_cancelled,
            stream=True,
        )

    def handle_get(event: Event):
        model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            instances = _query(index, event.identifier, model)
        except QueryError as exc:
            yield 1
            yield exc.status, _refusal(exc)
            return
        yield len(instances)
        accepted = accepted_syntaxes(event.assoc)
        yield from sub_operations(store, instances, lambda: accepted, lambda: event.is_cancelled)

    return [(evt.EVT_C_MOVE, handle_move), (evt.EVT_C_GET, handle_get)]
