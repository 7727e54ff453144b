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

import pynetdicom.association
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.dsutils import encode as pynetdicom_encode
from pynetdicom.presentation import PresentationContext

from compacs.net.event_reactor import UnsupportedPynetdicom

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


class EncodedDataSet(Dataset):
    """A data set already encoded in ``transfer_syntax`` for a C-STORE-RQ (PS3.7 9.3.1.1):
    the stored file's data set sent as it is, or one decoded ahead in a worker process.
    pynetdicom's C-MOVE and C-GET loops take it as any Dataset (it carries the SOP Class
    and Instance UIDs they read); its bytes reach the wire through :func:`encode` without
    being parsed or encoded again."""

    def __init__(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, encoded: bytes
    ) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        syntax = UID(transfer_syntax)
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = syntax
        self.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
        self.encoded = encoded
        self.encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``dsutils.encode`` as ``association.send_c_store`` calls it: an
    :class:`EncodedDataSet` gives its bytes when the context's encoding is its own (else
    None: pynetdicom fails that sub-operation, never sends bytes under another syntax);
    any other data set is encoded by pynetdicom as before."""
    if isinstance(ds, EncodedDataSet):
        if ds.encoding != (is_implicit_vr, is_little_endian, deflated):
            return None
        return ds.encoded
    return pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    """Let ``Association.send_c_store`` send :class:`EncodedDataSet` bytes as they are
    (once; idempotent). Written for pynetdicom 3.0.x, like ``net/command_set.py``: refuses
    to run unless the name it replaces in ``pynetdicom.association`` is ``dsutils.encode``
    and ``send_c_store`` still calls it."""
    current = getattr(pynetdicom.association, "encode", None)
    if current is encode:
        return
    uses = pynetdicom.association.Association.send_c_store.__code__.co_names
    if current is not pynetdicom_encode or "encode" not in uses:
        raise UnsupportedPynetdicom(
            "pynetdicom.association.encode is not dsutils.encode, or send_c_store no longer "
            "calls it: compacs's retrieve sender (net/sender.py) was written for pynetdicom 3.0.x"
        )
    pynetdicom.association.encode = encode  # type: ignore[attr-defined]  # its own binding of dsutils.encode, replaced


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

    def associate(  # type: ignore[override]  # the contexts it is given, per peer
        self, addr: Any, port: int, contexts: Any = None, **kwargs: Any
    ) -> Any:
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
