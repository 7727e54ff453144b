"""A forwarding destination for the tests: a pynetdicom storage SCP on 127.0.0.1 that
records every C-STORE it gets (so duplicates and order can be checked), and can be told
to refuse some instances or accept only some transfer syntaxes."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts

from compacs.dicom.syntaxes import accepted_for_storage
from tests.support.node import free_port

UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


@dataclass(frozen=True)
class Arrival:
    sop_instance_uid: str
    study_uid: str
    transfer_syntax: str
    calling_ae: str
    dataset: Dataset


class Destination:
    def __init__(
        self,
        aet: str = "DEST",
        port: int | None = None,
        syntaxes: list[str] | None = None,
        refuse: set[str] | None = None,
    ) -> None:
        self.aet = aet
        self.port = port or free_port()
        self.syntaxes = syntaxes or accepted_for_storage()
        self.refuse = set(refuse or ())
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.refuse:
            return 0xA700  # out of resources: a failure the sender may retry
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.arrivals.append(
                Arrival(
                    uid,
                    str(ds.StudyInstanceUID),
                    str(event.context.transfer_syntax),
                    event.assoc.requestor.ae_title,
                    ds,
                )
            )
        return 0x0000

    def start(self) -> Destination:
        ae = AE(ae_title=self.aet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, self.syntaxes)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        with self._lock:
            return [a.sop_instance_uid for a in self.arrivals]

    def __enter__(self) -> Destination:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
