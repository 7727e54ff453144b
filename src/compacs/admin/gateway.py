"""The admin's side of the gateway: forward by hand, inspect and steer the queue, delete.

These work on the index and the store directly, beside a running node: the node's
forwarders pick queued items up (they poll the queue), and every change is one index
transaction, with objects deleted only after the rows that referenced them are gone.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from compacs.dicom.attributes import IMAGE, PATIENT, SERIES, STUDY
from compacs.index import Catalogue, Forward, ForwardItem, ForwardQueue, Selected
from compacs.index.forward_state import ForwardState
from compacs.routing import DEFAULT_SYNTAXES, syntax_uids
from compacs.storage import BlobStore

log = logging.getLogger(__name__)

LEVEL_OPTIONS = {"patient": PATIENT, "study": STUDY, "series": SERIES, "instance": IMAGE}


def selected(index: Catalogue, selection: dict[str, str | None]) -> list[Selected]:
    """The instances under the UIDs given per level (``--study``, ``--series``, ...)."""
    chosen: dict[int, Selected] = {}
    for option, level in LEVEL_OPTIONS.items():
        uid = selection.get(option)
        if uid:
            chosen.update((s.pk, s) for s in index.instances_under(level, uid))
    return list(chosen.values())


def describe(instances: list[Selected]) -> str:
    """``N instance(s) of S study(ies), X MiB stored``: what a deletion would remove."""
    studies = len({s.study_uid for s in instances})
    stored = sum(s.bytes_stored for s in instances) / 2**20
    return f"{len(instances)} instance(s) of {studies} study(ies), {stored:.1f} MiB stored"


def forward(index: ForwardQueue, pks: list[int], destination: str) -> int:
    """Queue the instances for ``destination`` with the default syntaxes."""
    syntaxes = syntax_uids(list(DEFAULT_SYNTAXES), False, "compacs forward")
    return index.enqueue_forwards(pks, Forward(destination=destination, syntaxes=syntaxes))


def delete(index: Catalogue, store: BlobStore, instances: list[Selected]) -> int:
    """Remove instances: the row (and its queue items) first, then the object. Each one is
    logged by its UIDs (never by a patient's name or ID: the log is no place for PHI)."""
    removed = 0
    for instance in instances:
        key = index.delete_instance(instance.pk)
        if key is not None:
            store.delete(key)
            removed += 1
            log.info(
                "deleted instance %s of study %s (compacs delete)",
                instance.sop_instance_uid,
                instance.study_uid,
            )
    return removed


QUEUE_STATES = tuple(ForwardState)


def print_queue(items: list[ForwardItem], out: TextIO = sys.stdout) -> None:
    header = f"{'id':>6}  {'state':<10} {'tries':>5}  {'destination':<32} sop instance uid"
    print(header, file=out)
    for item in items:
        print(
            f"{item['pk']:>6}  {item['state']:<10} {item['attempts']:>5}  "
            f"{item['destination']:<32} {item['sop_instance_uid']}",
            file=out,
        )
        if item["last_error"] and item["state"] != ForwardState.DONE:
            print(f"{'':>8}last error: {item['last_error']}", file=out)


def queue_document(items: list[ForwardItem]) -> list[dict[str, Any]]:
    """The items as ``compacs queue list --json`` prints them."""
    return [
        {
            "pk": item["pk"],
            "state": item["state"],
            "attempts": item["attempts"],
            "destination": item["destination"],
            "sop_instance_uid": item["sop_instance_uid"],
            "study_uid": item["study_uid"],
            "transfer_syntax_sent": item["transfer_syntax_sent"],
            "bytes_sent": item["bytes_sent"],
            "last_error": item["last_error"],
            "updated_at": item["updated_at"],
        }
        for item in items
    ]
