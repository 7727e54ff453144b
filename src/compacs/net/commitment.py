"""Storage Commitment Push Model SCP (PS3.4 Annex J).

N-ACTION asks the archive to take responsibility for a list of instances. Each one is
committed only when it is indexed and its object still has the SHA-256 recorded at
ingest; the answer is an N-EVENT-REPORT (J.3.3) on the same association when the
requester keeps it open, otherwise on a new association to the requester's configured
address (a peer with its AE title), where compacs takes the SCP role (J.3.3.1).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from compacs.config import Peer
from compacs.dicom.status import Status, done
from compacs.index import Index
from compacs.net.server import REQUESTOR_HANDLERS
from compacs.storage import BlobStore

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.1
SAME_ASSOCIATION_GRACE = 0.5  # seconds after the N-ACTION response to notice a release


def check(index: Index, store: BlobStore, references: list[Dataset]) -> tuple[list, list]:
    """(committed, failed) Referenced SOP items; failed ones carry a Failure Reason."""
    committed, failed = [], []
    for ref in references:
        uid = str(ref.get("ReferencedSOPInstanceUID", ""))
        sop_class = str(ref.get("ReferencedSOPClassUID", ""))
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        location = index.locate(uid) if uid else None
        if location is None:
            item.FailureReason = Status.NO_SUCH_OBJECT  # PS3.4 J.3.3.1.1
        elif location.sop_class_uid != sop_class:
            item.FailureReason = Status.CLASS_INSTANCE_CONFLICT
        else:
            try:
                digest = hashlib.sha256(store.get(location.storage_key)).hexdigest()
            except OSError:
                digest = ""
            if digest != location.sha256:
                log.error("storage commitment: %s does not match its SHA-256", uid)
                item.FailureReason = Status.PROCESSING_FAILURE
        (failed if "FailureReason" in item else committed).append(item)
    return committed, failed


def event_report(transaction_uid: str, committed: list, failed: list) -> tuple[Dataset, int]:
    info = Dataset()
    info.TransactionUID = transaction_uid
    if committed:
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    return info, (2 if failed else 1)  # Event Type ID, PS3.4 J.3.3


def _send_on_new_association(ae_title: str, peer: Peer, info: Dataset, event_type: int) -> bool:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        ext_neg=[role],
        evt_handlers=REQUESTOR_HANDLERS,
    )
    if not assoc.is_established:
        return False
    try:
        status, _ = assoc.send_n_event_report(
            info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
        )
        return "Status" in status and done(int(status.Status))
    finally:
        assoc.release()


def handlers(
    index: Index,
    store: BlobStore,
    peers: dict[str, Peer],
    ae_title: str,
    on_report: Callable[[Dataset, int], None] | None = None,
):
    """N-ACTION (compacs as the commitment SCP), and N-EVENT-REPORT: the report of a
    destination compacs forwarded to, sent on an association of its own (J.3.3.1)."""

    def report_later(assoc, calling: str, info: Dataset, event_type: int) -> None:
        time.sleep(SAME_ASSOCIATION_GRACE)
        if assoc.is_established:
            try:
                assoc.send_n_event_report(
                    info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
                )
                return
            except Exception as exc:
                log.warning("storage commitment report on the same association failed: %s", exc)
        peer = peers.get(calling)
        if peer is None:
            log.error(
                "storage commitment: %s released before the report and is not a "
                "configured peer; the report cannot be delivered",
                calling,
            )
            return
        if not _send_on_new_association(ae_title, peer, info, event_type):
            log.error("storage commitment report to %s failed", peer)

    def handle_action(event: Event):
        request = event.action_information
        transaction = str(request.get("TransactionUID", ""))
        if event.action_type != 1 or not transaction:
            missing = Status.NO_SUCH_ACTION if event.action_type != 1 else Status.MISSING_ATTRIBUTE
            return missing, None
        committed, failed = check(index, store, list(request.get("ReferencedSOPSequence", [])))
        log.info(
            "storage commitment %s from %s: %d committed, %d failed",
            transaction,
            event.assoc.requestor.ae_title,
            len(committed),
            len(failed),
        )
        info, event_type = event_report(transaction, committed, failed)
        threading.Thread(
            target=report_later,
            args=(event.assoc, event.assoc.requestor.ae_title, info, event_type),
            daemon=True,
        ).start()
        return Status.SUCCESS, None

    def handle_report(event: Event):
        if on_report is None or event.event_type not in (1, 2):
            return Status.NO_SUCH_EVENT_TYPE, None
        on_report(event.event_information, event.event_type)
        return Status.SUCCESS, None

    return [(evt.EVT_N_ACTION, handle_action), (evt.EVT_N_EVENT_REPORT, handle_report)]
