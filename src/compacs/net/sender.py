"""The SCU side compacs uses to send: associations that respect the 128-context limit.

A requestor may propose at most 128 presentation contexts on one association (PS3.8
9.3.2.2, Presentation Context ID is an odd number 1-255). A retrieve that needs more
(many SOP classes, each proposed with its stored syntax and with the native syntaxes)
is split over several associations to the same peer, each carrying whole SOP classes;
:class:`FanOutAssociation` presents them as one to pynetdicom's C-MOVE loop and routes
each C-STORE to the association that accepted a context for it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext

MAX_CONTEXTS = 128


def batches(
    contexts: Sequence[PresentationContext], size: int = MAX_CONTEXTS
) -> list[list[PresentationContext]]:
    """Contexts in groups of at most ``size``, never splitting one SOP class's contexts."""
    groups: dict[str, list[PresentationContext]] = {}
    for cx in contexts:
        groups.setdefault(str(cx.abstract_syntax), []).append(cx)
    out: list[list[PresentationContext]] = [[]]
    for group in groups.values():
        if len(out[-1]) + len(group) > size and out[-1]:
            out.append([])
        out[-1].extend(group[:size])
    return out


class StoredFile(Dataset):
    """A stored object to send as it is. pynetdicom's C-MOVE loop wants a Dataset; the
    associations ArchiveAE returns hand pynetdicom the file's path instead, which it
    streams without decoding (STORE_SEND_CHUNKED_DATASET, set by the node)."""

    def __init__(self, path: Path, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.stored_path = path


class FanOutAssociation:
    """One or several established associations to one peer, used as one for sending."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members

    @property
    def is_established(self) -> bool:
        return any(m.is_established for m in self.members)

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        return [cx for m in self.members if m.is_established for cx in m.accepted_contexts]

    @property
    def dul(self) -> Any:
        return self.members[0].dul

    def send_c_store(self, dataset: Any, **kwargs: Any) -> Any:
        sop_class = str(dataset.SOPClassUID)
        payload = dataset.stored_path if isinstance(dataset, StoredFile) else dataset
        for member in self.members:
            if member.is_established and any(
                str(cx.abstract_syntax) == sop_class for cx in member.accepted_contexts
            ):
                return member.send_c_store(payload, **kwargs)
        raise ValueError(f"no accepted presentation context for {sop_class}")

    def release(self) -> None:
        for member in self.members:
            if member.is_established:
                member.release()

    def abort(self) -> None:
        for member in self.members:
            if member.is_established:
                member.abort()


class ArchiveAE(AE):
    """pynetdicom's AE, whose outgoing associations split over 128 contexts, and which
    remembers per thread the association it last requested (the C-MOVE handler runs in
    the thread that pynetdicom's C-MOVE loop requests the sub-association from)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requested = threading.local()

    def associate(self, addr: Any, port: int, contexts: Any = None, **kwargs: Any) -> Any:
        contexts = list(contexts or self.requested_contexts)
        assoc = FanOutAssociation(
            [
                super(ArchiveAE, self).associate(addr, port, contexts=batch, **kwargs)
                for batch in batches(contexts)
            ]
        )
        self._requested.assoc = assoc
        return assoc

    def last_requested(self) -> Any:
        """The association this thread last requested (None before any)."""
        return getattr(self._requested, "assoc", None)
