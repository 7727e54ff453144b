"""The gateway's SCU side: one association to a destination, C-STOREs, commitment.

Presentation contexts are proposed per SOP class, one per offered transfer syntax, so
that the destination can accept any of them (PS3.8 9.3.2.2); each instance is then sent
in the first syntax of its preference list the destination accepted, transcoded when
that is not the stored one. Storage Commitment (PS3.4 J.3.2) is requested on the same
association; the report may come on it or later on an association of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StorageCommitmentPushModel

from compacs.codecs.convert import convert
from compacs.codecs.table import restorable
from compacs.dicom.ae import Peer
from compacs.dicom.status import Status, describe, done
from compacs.index import ForwardItem
from compacs.net.commitment import WELL_KNOWN_INSTANCE
from compacs.net.sender import ArchiveAE, StoredFile
from compacs.net.server import REQUESTOR_HANDLERS
from compacs.routing import STORED
from compacs.storage import BlobStore

log = logging.getLogger(__name__)

Report = Callable[[Dataset, int], None]


def preference(item: ForwardItem) -> list[str]:
    """The item's syntaxes with ``stored`` replaced by its stored syntax and the one it
    restores without decoding (:func:`compacs.codecs.table.restorable`), once each."""
    out: list[str] = []
    kept = item["transfer_syntax_stored"]
    for uid in item["syntaxes"]:
        for each in (kept, *restorable(kept)) if uid == STORED else (uid,):
            if each not in out:
                out.append(each)
    return out


def proposal(items: list[ForwardItem], commit: bool) -> list[PresentationContext]:
    seen: set[tuple[str, str]] = set()
    contexts = [build_context(StorageCommitmentPushModel)] if commit else []
    for item in items:
        for uid in preference(item):
            key = (item["sop_class_uid"], uid)
            if key not in seen:
                seen.add(key)
                contexts.append(build_context(item["sop_class_uid"], [uid]))
    return contexts


@dataclass
class Sent:
    delivered: bool
    status: int | None
    """None: no response (the association is gone)."""
    syntax: str | None = None
    size: int | None = None
    sop_instance_uid: str | None = None
    """What the destination holds now (a lossy route sends a derived instance)."""
    error: str | None = None


class Link:
    """An open association to one destination."""

    def __init__(
        self, ae_title: str, peer: Peer, contexts: list[PresentationContext], on_report: Report
    ) -> None:
        self.peer = peer
        ae = ArchiveAE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60

        def report(event: Any) -> tuple[int, None]:
            on_report(event.event_information, event.event_type)
            return Status.SUCCESS, None

        handlers = [*REQUESTOR_HANDLERS, (evt.EVT_N_EVENT_REPORT, report)]
        self.assoc = ae.associate(
            peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title, evt_handlers=handlers
        )
        self.offered = {str(cx.abstract_syntax) for cx in contexts} | {
            (str(cx.abstract_syntax), str(uid)) for cx in contexts for uid in cx.transfer_syntax
        }
        self.accepted: dict[str, set[str]] = {}
        for cx in self.assoc.accepted_contexts:
            self.accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))

    @property
    def established(self) -> bool:
        return bool(self.assoc.is_established)

    def carries(self, items: list[ForwardItem]) -> bool:
        """Whether this association offered everything ``items`` need (then the answer
        of a new association would be the same)."""
        if any(item["commit"] for item in items) and StorageCommitmentPushModel not in self.offered:
            return False
        return all(
            (item["sop_class_uid"], uid) in self.offered
            for item in items
            for uid in preference(item)
        )

    def send(self, item: ForwardItem, store: BlobStore) -> Sent:
        accepted = self.accepted.get(item["sop_class_uid"], set())
        target = next((uid for uid in preference(item) if uid in accepted), None)
        if target is None:
            offered = ", ".join(preference(item))
            return Sent(False, None, error=f"the destination accepted none of {offered}")
        uid = item["sop_instance_uid"]
        path = store.local_path(item["storage_key"])
        payload: Any
        if target == item["transfer_syntax_stored"] and path is not None and path.is_file():
            payload = StoredFile(path, item["sop_class_uid"], uid)  # streamed from the file
            size = int(item["bytes_stored"])
        else:
            lossy = dict(item.get("codec_options") or {}) if item.get("lossy") else None
            converted = convert(store.get(item["storage_key"]), target, lossy)
            payload, size = converted.dataset, converted.size
            uid = converted.derived_uid or uid
        status = self.assoc.send_c_store(payload)
        if "Status" not in status:
            return Sent(False, None, target, error="no response: the association was lost")
        code = int(status.Status)
        if done(code):  # success, or a warning: stored (PS3.4 B.2.3)
            return Sent(True, code, target, size, uid)
        comment = str(status.get("ErrorComment", "") or "")
        error = f"refused with status {describe(code)}" + (f": {comment}" if comment else "")
        return Sent(False, code, target, error=error)

    def request_commitment(self, transaction: str, references: list[tuple[str, str]]) -> str | None:
        """N-ACTION Request Storage Commitment (PS3.4 J.3.2); None when accepted, else why."""
        if StorageCommitmentPushModel not in self.accepted:
            return "the destination does not support Storage Commitment"
        request = Dataset()
        request.TransactionUID = transaction
        request.ReferencedSOPSequence = []
        for sop_class, uid in references:
            ref = Dataset()
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedSOPInstanceUID = uid
            request.ReferencedSOPSequence.append(ref)
        member = next(
            m
            for m in self.assoc.members
            for cx in m.accepted_contexts
            if str(cx.abstract_syntax) == StorageCommitmentPushModel
        )
        status, _ = member.send_n_action(
            request, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
        )
        if "Status" not in status:
            return "no response to the Storage Commitment request"
        if not done(int(status.Status)):
            return f"Storage Commitment request refused with status {describe(int(status.Status))}"
        return None

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        else:
            self.assoc.abort()


def report_outcome(info: Dataset) -> tuple[str, set[str], set[str]]:
    """(Transaction UID, committed UIDs, failed UIDs) of an N-EVENT-REPORT (PS3.4 J.3.3)."""
    committed = {str(r.ReferencedSOPInstanceUID) for r in info.get("ReferencedSOPSequence", [])}
    failed = {str(r.ReferencedSOPInstanceUID) for r in info.get("FailedSOPSequence", [])}
    return str(info.get("TransactionUID", "")), committed, failed
