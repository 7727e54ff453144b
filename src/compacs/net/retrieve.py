"""Query/Retrieve C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3).

The handlers stay thin: the index picks the instances (same matching as C-FIND), and
:func:`prepare` turns each stored object into the data set bytes of its C-STORE-RQ in a
syntax the peer accepted (:func:`target_syntax`): the stored file's data set as it is,
never parsed, when its syntax was accepted; otherwise decompressed (or re-encoded into a
syntax the peer accepted, verified) in the worker processes, several sub-operations ahead
of the one being sent (:class:`ReadAhead`), so that both cores decode while the node
sends. The bytes reach the wire without pydicom encoding them again
(:class:`compacs.net.sender.EncodedDataSet`). A file that cannot be read or transcoded is
one failed sub-operation, never a stale data set (the defect of pynetdicom's qrscp
example).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
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

from compacs.codecs.table import CODECS, restorable
from compacs.codecs.work import Decoded, to_peer_syntax
from compacs.dicom import part10
from compacs.dicom.ae import Peer
from compacs.dicom.status import Status, error_comment
from compacs.dicom.syntaxes import NATIVE_SYNTAXES
from compacs.index import Catalogue, StoredInstance
from compacs.net import Handler, sender
from compacs.net.sender import ArchiveAE, EncodedDataSet
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


def proposal(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination (PS3.4 C.4.2.3.1): per SOP class, each
    stored syntax and the syntax it restores without decoding (:func:`restorable`: the
    received JPEG baseline of a JPEG XL recompression), then Explicit and Implicit VR
    Little Endian, each on a context of its
    own. An acceptor chooses one syntax per context in its own order (PS3.8 9.3.3.2), and
    many prefer Implicit VR, which loses the VRs of private attributes: offered apart,
    each is accepted on its own and :func:`target_syntax` sends the stored syntax, else
    Explicit. More than 128 are split over several associations by
    :class:`compacs.net.sender.ArchiveAE`."""
    stored: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = stored.setdefault(inst["sop_class_uid"], [])
        kept = inst["transfer_syntax_stored"]
        for uid in (kept, *restorable(kept)):
            if uid not in syntaxes + list(NATIVE_SYNTAXES):
                syntaxes.append(uid)
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


def target_syntax(stored: str, accepted: set[str]) -> str:
    """What to send a stored object in: as stored, else as received where that needs no
    decoding (:func:`restorable`), else native, else re-encoded losslessly (compressed to
    compressed, verified), whichever the peer accepted first."""
    lossless = [c.transfer_syntax for c in CODECS if c.lossless and c.recompresses in ("", stored)]
    target = choose_syntax([stored, *restorable(stored), *NATIVE_SYNTAXES, *lossless], accepted)
    if target is None:
        raise NotAcceptable(f"the peer accepted none of {stored} or a syntax compacs can produce")
    return target


class SubOperationFailed(RuntimeError):
    """The object could not be brought to a syntax the peer accepted (a decode failed)."""


Decode = Callable[[bytes, str], Decoded]
"""Brings a stored object to a syntax (``Encoder.decode``: in the worker processes)."""


def prepare(
    store: BlobStore, inst: StoredInstance, accepted: set[str], decode: Decode
) -> EncodedDataSet:
    """One sub-operation's data set, encoded for the wire: the stored file's data set as
    it is when the peer accepted its syntax, else decoded (or re-encoded) by ``decode``."""
    data = store.get(inst["storage_key"])
    stored, offset = part10.split(data)
    target = target_syntax(stored, accepted)
    if target == stored:
        encoded = data[offset:]
    else:
        decoded = decode(data, target)
        if decoded.error:
            raise SubOperationFailed(decoded.error)
        encoded = decoded.data_set
    return EncodedDataSet(inst["sop_class_uid"], inst["sop_instance_uid"], target, encoded)


class ReadAhead:
    """The sub-operations' data sets, handed out in the order of ``instances``; those that
    ``needs_decode`` are prepared up to ``depth`` ahead of the one being sent, in threads
    that each wait for a worker process, the others (a file read) when their turn comes,
    in the caller's thread. At most ``depth`` are prepared or held at a time, so memory
    stays bounded whatever the number of instances. :meth:`close` cancels what has not
    started and waits for what has, so that no worker process is left busy."""

    def __init__(
        self,
        work: Callable[[StoredInstance], EncodedDataSet],
        needs_decode: Callable[[StoredInstance], bool],
        instances: list[StoredInstance],
        depth: int,
    ) -> None:
        self._work = work
        self._needs_decode = needs_decode
        self._instances = iter(instances)
        self._pending: deque[tuple[StoredInstance, Future[EncodedDataSet] | None]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="read-ahead")
        for _ in range(depth):
            self._submit_next()

    def _submit_next(self) -> None:
        inst = next(self._instances, None)
        if inst is not None:
            ahead = self._needs_decode(inst)
            future = self._executor.submit(self._work, inst) if ahead else None
            self._pending.append((inst, future))

    def __iter__(self) -> Iterator[tuple[StoredInstance, Callable[[], EncodedDataSet]]]:
        while self._pending:
            inst, future = self._pending.popleft()
            self._submit_next()
            yield inst, future.result if future is not None else partial(self._work, inst)

    def close(self) -> None:
        for _, future in self._pending:
            if future is not None:
                future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _failed_sub_operation(inst: StoredInstance) -> Dataset:
    """A data set pynetdicom cannot send (no context for its syntax): it counts the
    sub-operation as failed and lists the SOP Instance UID (PS3.4 C.4.2.1.4.2)."""
    ds = Dataset()
    ds.SOPClassUID = inst["sop_class_uid"]
    ds.SOPInstanceUID = inst["sop_instance_uid"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(UNSENDABLE_SYNTAX)
    return ds


def sub_operations(
    store: BlobStore,
    instances: list[StoredInstance],
    accepted: Callable[[], dict[str, set[str]]],
    is_cancelled: Callable[[], bool],
    decode: Decode,
    depth: int = 2,
) -> Iterator[tuple[int, Dataset | None]]:
    """(status, data set) per instance for pynetdicom's retrieve loop (PS3.4 C.4.2.3,
    C.4.3.3), those to decode prepared ``depth`` ahead (:class:`ReadAhead`). A C-CANCEL is honoured
    between sub-operations, after the read-ahead has stopped; an object that cannot be
    read or decoded is one failed sub-operation."""
    syntaxes = accepted()  # the destination's association is established by now

    def work(inst: StoredInstance) -> EncodedDataSet:
        return prepare(store, inst, syntaxes.get(inst["sop_class_uid"], set()), decode)

    def needs_decode(inst: StoredInstance) -> bool:
        accepted = syntaxes.get(inst["sop_class_uid"], set())
        return inst["transfer_syntax_stored"] not in accepted

    ahead = ReadAhead(work, needs_decode, instances, depth)
    try:
        for inst, prepared in ahead:
            if is_cancelled():
                ahead.close()
                yield Status.CANCEL, None
                return
            try:
                dataset: Dataset = prepared()
            except Exception as exc:
                log.warning("sub-operation for %s failed: %s", inst["sop_instance_uid"], exc)
                dataset = _failed_sub_operation(inst)
            yield Status.PENDING, dataset
    finally:
        ahead.close()


MoveStep = tuple[None, None] | tuple[str, int, dict[str, Any]] | int | tuple[int, Dataset | None]
"""What a C-MOVE handler yields to pynetdicom, in order: the destination (host, port and
association options; ``(None, None)``: unknown, 0xA801), the number of sub-operations,
then a status and data set per response (PS3.4 C.4.2)."""


def _query(index: Catalogue, identifier: Dataset, model: str) -> list[StoredInstance]:
    return index.matching_instances(parse_identifier(identifier, model))


def _refusal(exc: QueryError) -> Dataset:
    ds = Dataset()
    ds.ErrorComment = error_comment(exc.comment)
    return ds


def handlers(
    index: Catalogue,
    store: BlobStore,
    peers: dict[str, Peer],
    move_allowed: Callable[[str, str], bool],
    decode: Decode = to_peer_syntax,
    read_ahead: int = 2,
) -> list[Handler]:
    """The C-MOVE and C-GET handlers. ``decode`` brings an object to another syntax (the
    node passes its worker processes'), ``read_ahead`` sub-operations are prepared ahead
    of the one being sent (the node: twice the worker processes, so both cores decode)."""
    sender.install()  # EncodedDataSet bytes go on the wire as they are

    def handle_move(event: Event) -> Iterator[MoveStep]:
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
        sub_association = cast(ArchiveAE, event.assoc.ae).last_requested()
        yield from sub_operations(
            store,
            instances,
            lambda: accepted_syntaxes(sub_association),
            lambda: event.is_cancelled,
            decode,
            read_ahead,
        )

    def handle_get(event: Event) -> Iterator[int | tuple[int, Dataset | None]]:
        model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            instances = _query(index, event.identifier, model)
        except QueryError as exc:
            yield 1
            yield exc.status, _refusal(exc)
            return
        yield len(instances)
        yield from sub_operations(
            store,
            instances,
            lambda: accepted_syntaxes(event.assoc),
            lambda: event.is_cancelled,
            decode,
            read_ahead,
        )

    return [(evt.EVT_C_MOVE, handle_move), (evt.EVT_C_GET, handle_get)]
