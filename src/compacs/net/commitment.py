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
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from compacs.dicom.ae import Peer
from compacs.dicom.status import Status, done
from compacs.index import Catalogue, InstanceLocation
from compacs.net import Handler
from compacs.net.server import REQUESTOR_HANDLERS
from compacs.storage import BlobStore

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.1
SAME_ASSOCIATION_GRACE = 0.5  # seconds after the N-ACTION response to notice a release


MAX_REFERENCES = 10_000
"""References one N-ACTION may carry: each costs a read and a SHA-256 of its object."""
CHECKS_AT_ONCE = threading.BoundedSemaphore(2)
"""Commitment checks running at once, node-wide: the rest wait their turn."""


def check(
    index: Catalogue,
    store: BlobStore,
    references: list[Dataset],
    visible: Callable[[InstanceLocation], bool] = lambda location: True,
) -> tuple[list[Dataset], list[Dataset]]:
    """(committed, failed) Referenced SOP items; failed ones carry a Failure Reason.

    An instance the requester may not see (``visible``) is answered as if it did not exist
    (0x0112): commitment reveals no more than C-FIND would. A UID referenced twice is read
    and hashed once."""
    committed: list[Dataset] = []
    failed: list[Dataset] = []
    verdicts: dict[tuple[str, str], int | None] = {}
    for ref in references:
        uid = str(ref.get("ReferencedSOPInstanceUID", ""))
        sop_class = str(ref.get("ReferencedSOPClassUID", ""))
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        if (uid, sop_class) not in verdicts:
            verdicts[uid, sop_class] = _failure_reason(index, store, uid, sop_class, visible)
        reason = verdicts[uid, sop_class]
        if reason is not None:
            item.FailureReason = reason
        (failed if "FailureReason" in item else committed).append(item)
    return committed, failed


def _failure_reason(
    index: Catalogue,
    store: BlobStore,
    uid: str,
    sop_class: str,
    visible: Callable[[InstanceLocation], bool],
) -> int | None:
    """None when the archive holds ``uid`` whole (PS3.4 J.3.3.1.1 Failure Reasons)."""
    location = index.locate(uid) if uid else None
    if location is None or not visible(location):
        return Status.NO_SUCH_OBJECT  # PS3.4 J.3.3.1.1
    if location.sop_class_uid != sop_class:
        return Status.CLASS_INSTANCE_CONFLICT
    try:
        digest = hashlib.sha256(store.get(location.storage_key)).hexdigest()
    except OSError:
        digest = ""
    if digest != location.sha256:
        log.error("storage commitment: %s does not match its SHA-256", uid)
        return Status.PROCESSING_FAILURE
    return None


def event_report(
    transaction_uid: str, committed: list[Dataset], failed: list[Dataset]
) -> tuple[Dataset, int]:
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
        evt_handlers=[*REQUESTOR_HANDLERS],
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
    index: Catalogue,
    store: BlobStore,
    peers: dict[str, Peer],
    ae_title: str,
    on_report: Callable[[Dataset, int], None] | None = None,
    sees_all: Callable[[str, str], bool] = lambda calling, address: True,
) -> list[Handler]:
    """N-ACTION (compacs as the commitment SCP), and N-EVENT-REPORT: the report of a
    destination compacs forwarded to, sent on an association of its own (J.3.3.1).

    ``sees_all(calling AE, address)``: whether the requester may learn of every instance
    (it may C-FIND); otherwise only of those it sent itself."""

    def check_and_report(
        assoc: Association, calling: str, address: str, transaction: str, references: list[Dataset]
    ) -> None:
        def visible(location: InstanceLocation) -> bool:
            return sees_all(calling, address) or location.extra.get("calling_ae") == calling

        start = time.monotonic()
        with CHECKS_AT_ONCE:
            committed, failed = check(index, store, references, visible)
        log.info(
            "storage commitment %s from %s: %d committed, %d failed",
            transaction,
            calling,
            len(committed),
            len(failed),
        )
        info, event_type = event_report(transaction, committed, failed)
        time.sleep(max(0.0, SAME_ASSOCIATION_GRACE - (time.monotonic() - start)))
        report(assoc, calling, info, event_type)

    def report(assoc: Association, calling: str, info: Dataset, event_type: int) -> None:
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

    def handle_action(event: Event) -> tuple[int, None]:
        request = event.action_information
        transaction = str(request.get("TransactionUID", ""))
        if event.action_type != 1 or not transaction:
            missing = Status.NO_SUCH_ACTION if event.action_type != 1 else Status.MISSING_ATTRIBUTE
            return missing, None
        references = list(request.get("ReferencedSOPSequence", []))
        calling = event.assoc.requestor.ae_title
        if len(references) > MAX_REFERENCES:
            log.warning(
                "storage commitment %s from %s refused (0x%04X): %d references, at most %d",
                transaction,
                calling,
                Status.RESOURCE_LIMITATION,
                len(references),
                MAX_REFERENCES,
            )
            return Status.RESOURCE_LIMITATION, None
        # the answer is the N-EVENT-REPORT (J.3.3); the N-ACTION response only takes the
        # request, so the reads and hashes happen after it, a bounded number at a time
        threading.Thread(
            target=check_and_report,
            args=(
                event.assoc,
                calling,
                str(event.assoc.requestor.address),
                transaction,
                references,
            ),
            daemon=True,
        ).start()
        return Status.SUCCESS, None

    def handle_report(event: Event) -> tuple[int, None]:
        if on_report is None or event.event_type not in (1, 2):
            return Status.NO_SUCH_EVENT_TYPE, None
        on_report(event.event_information, event.event_type)
        return Status.SUCCESS, None

    return [(evt.EVT_N_ACTION, handle_action), (evt.EVT_N_EVENT_REPORT, handle_report)]
