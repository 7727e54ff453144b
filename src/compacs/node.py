"""A running node: backends, ingest and the DICOM services, built from settings."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from compacs.config import Settings
from compacs.index import open_index
from compacs.ingest import Ingest
from compacs.net import echo, store
from compacs.net.server import build_ae, make_server
from compacs.storage import open_store

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(settings.resolved_store_url)
        leftovers = self.store.recover()
        if leftovers:
            log.warning("removed %d partial object(s) left by an interrupted write", leftovers)
        self.index = open_index(settings.resolved_index_url)
        self.ingest = Ingest(self.store, self.index, settings.duplicates)
        self.ae = build_ae(
            settings.ae_title,
            max_pdu=settings.max_pdu,
            max_associations=settings.max_associations,
            timeouts={
                "acse": settings.acse_timeout,
                "dimse": settings.dimse_timeout,
                "network": settings.network_timeout,
            },
        )
        self.server = make_server(
            self.ae, settings.host, settings.port, echo.HANDLERS + store.handlers(self.ingest)
        )
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def serve_forever(self) -> None:
        host, port = self.address
        log.info(
            "compacs %s listening on %s:%d (index %s, store %s)",
            self.settings.ae_title, host, port, self.index.url, self.store.url,
        )
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop accepting; serve_forever returns once in-flight stores have finished."""
        threading.Thread(target=self.server.shutdown, daemon=True).start()

    def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.server_close()
        timeout = self.settings.drain_timeout
        active = [a for a in self.server.active_associations if a.is_alive()]
        if active:
            log.info("waiting up to %.0f s for %d association(s) to finish", timeout, len(active))
        for assoc in active:
            assoc.join(timeout)
        for assoc in self.server.active_associations:
            if assoc.is_alive():
                log.warning("aborting association with %s", assoc.requestor.ae_title)
                assoc.abort()
        if not self.ingest.drain(timeout):
            log.error("stores still running after %.0f s; their senders got no Success", timeout)
        self.index.close()
        self.store.close()
        log.info("compacs stopped")

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
