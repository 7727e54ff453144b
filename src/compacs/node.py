"""A running node: backends, ingest and the DICOM services, built from settings."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import socketserver
import sys
import threading
import time
from types import FrameType

from compacs import libraries
from compacs.activity import Activity
from compacs.config import Settings
from compacs.index import open_index
from compacs.ingest import Ingest
from compacs.jobs.archive import ArchivePass
from compacs.jobs.compress import Compressor
from compacs.jobs.forward import Forwarder
from compacs.jobs.pool import Encoder, InProcess, WorkerProcesses
from compacs.jobs.workers import CompressionWorkers
from compacs.lockfile import InUse, serving_locks
from compacs.metrics import MetricsServer
from compacs.net import access, commitment, echo, find, instrument, retrieve, store
from compacs.net.guard import ConnectionGuard, Limits
from compacs.net.server import ACCEPTOR_HANDLERS, build_ae, make_server
from compacs.rules import When
from compacs.security import server_tls_context
from compacs.storage import open_store
from compacs.storage.owner import StoreOwned, claim

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (CPython's default is
5 ms). A C-STORE passes through four threads of the node (the association's DUL and
reactor, the staging helpers, the group committer), each waking the next; with the
default, a helper woken while the handler parses waited for the whole parse before it
could start its hash or write (issue 15). Set for the serving process only."""


class NodeRefused(RuntimeError):
    """The node must not start: its data directory is in use, or its port is taken."""


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        libraries.configure(settings.log_phi and settings.log_level == "DEBUG")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._locks = serving_locks(settings.data_dir, settings.resolved_index_url)
        try:
            for lock in self._locks:
                lock.acquire()
        except InUse as exc:
            self._release_locks()
            raise NodeRefused(str(exc)) from None
        self.store = open_store(
            settings.resolved_store_url, settings.spool_dir, hold=settings.spool_hold
        )
        leftovers = self.store.recover()
        self.index = open_index(settings.resolved_index_url)
        try:
            claim(self.store, self.index.identity())
        except StoreOwned as exc:
            self._close_backends()
            raise NodeRefused(str(exc)) from None
        except OSError as exc:  # an unreachable store: stores get 0xA700 until it is back
            log.warning("store %s unreachable at start-up: %s", self.store.url, exc)
        # who this node is in queue claims: stable across restarts, distinct per node
        self.node_id = f"{socket.gethostname()}:{settings.port}"
        log_recovery(leftovers, self.index.release_claims(self.node_id))
        policy = settings.policy
        # the CPU part of compression in [compression] workers processes; with 0 (no
        # background workers) policy "ingest" still compresses, in the receiving thread
        self.encoder: Encoder = WorkerProcesses(policy.workers) if policy.workers else InProcess()
        self.compressor = Compressor(self.store, self.index, policy, self.encoder)
        self.workers = CompressionWorkers(
            self.compressor,
            self.index,
            policy.workers,
            on_done=self._compressed,
            node=self.node_id,
            receiving=lambda: self.ingest.receiving(),
        )
        self.archive = ArchivePass(self.index, policy.archive, queued=self.workers.wake)
        routing = settings.routing
        self.forwarder = Forwarder(
            self.index,
            self.store,
            routing,
            settings.ae_title,
            threads=min(8, max(2, 2 * routing.associations)),
            node=self.node_id,
        )
        self.ingest = Ingest(
            self.store,
            self.index,
            settings.duplicates,
            policy,
            routing=routing,
            max_object_size=settings.max_object_size,
            compress_now=self._compress_now,
            queued=self.workers.wake,
            forward_queued=self.forwarder.wake,
        )
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
        peers = {peer.ae_title: peer for peer in settings.peers}
        self.activity = Activity()  # recent associations and errors, for the web page
        self._activity_log = self.activity.log_handler()
        logging.getLogger("compacs").addHandler(self._activity_log)
        services = instrument.timed(
            echo.HANDLERS
            + store.handlers(self.ingest)
            + find.handlers(self.index, settings.ae_title, settings.pn_case_insensitive)
            + retrieve.handlers(
                self.index,
                self.store,
                peers,
                settings.move_allowed,
                # decode for a peer in the worker processes, two per process ahead
                decode=self.encoder.decode,
                read_ahead=2 * max(1, policy.workers),
            )
            + commitment.handlers(
                self.index,
                self.store,
                peers,
                settings.ae_title,
                self.forwarder.on_report,
                sees_all=lambda calling, address: (
                    "find" in settings.access.allowed(calling, address)
                ),
            )
        )
        tls = None
        if settings.tls_certificate and settings.tls_key:
            tls = server_tls_context(
                settings.tls_certificate, settings.tls_key, settings.tls_client_ca
            )
        guard = ConnectionGuard(
            Limits(
                acse_timeout=settings.acse_timeout,
                network_timeout=settings.network_timeout,
                max_pdu=settings.max_pdu,
                max_object_size=settings.max_object_size,
                # at least 4: a peer may open its next association the moment it reads
                # the A-ASSOCIATE-AC, a moment before the previous one counts as established
                max_negotiating=settings.max_negotiating or max(4, settings.max_associations),
                max_negotiating_per_host=settings.max_negotiating_per_host
                or max(4, settings.max_associations // 2),
            )
        )
        try:
            self.server = make_server(
                self.ae,
                settings.host,
                settings.port,
                ACCEPTOR_HANDLERS
                + access.handlers(settings.access)
                + access.guarded(settings.access, services)
                + self.activity.handlers(),
                ssl_context=tls,
                guard=guard,
            )
        except OSError as exc:
            guard.stop()
            self._close_backends()
            raise NodeRefused(
                f"cannot listen for DICOM on {settings.host}:{settings.port}: "
                f"{exc.strerror or exc} (another node or program has the port? choose "
                "another with --port or [node] port)"
            ) from None
        self.metrics = None
        if settings.metrics_port:
            try:
                self.metrics = MetricsServer(
                    settings.metrics_host,
                    settings.metrics_port,
                    self.index.stats,
                    disk=settings.data_dir,
                )
            except OSError as exc:
                self.server.server_close()
                self._close_backends()
                raise NodeRefused(
                    f"[metrics] cannot listen on {settings.metrics_host}:"
                    f"{settings.metrics_port}: {exc.strerror or exc}"
                ) from None
        self.web = self.viewer = None
        if settings.http_port:
            from compacs.web.server import build

            try:
                self.web, self.viewer = build(
                    settings, self.index, self.store, self.activity, self.ingest
                )
            except Exception:
                self.server.server_close()
                self._close_backends()
                raise
        self._stopped = threading.Event()

    def _compress_now(self, sop_instance_uid: str, key: str, data: bytes) -> None:
        """Policy "ingest": compress before the response, from the received bytes."""
        facts = self.index.claim_instance(sop_instance_uid, "ingest")
        if facts is not None:
            self.compressor.process(facts, written=(key, data))
            self._compressed()

    def _compressed(self) -> None:
        """A compression job is done: a forward that waited for it may be due (with no
        route that waits, the forwarders' claims would find nothing: two write
        transactions of the index per job, issue 15)."""
        if self.settings.routing.waits_for_compression:
            self.forwarder.wake()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def serve_forever(self) -> None:
        host, port = self.address
        sys.setswitchinterval(SWITCH_INTERVAL)
        log.info(
            "compacs %s listening on %s:%d (index %s, store %s)",
            self.settings.ae_title,
            host,
            port,
            self.index.url,
            self.store.url,
        )
        self.encoder.start()
        self.workers.start()
        policy = self.settings.policy
        if policy.when is not When.OFF and policy.workers:  # archive jobs need the workers
            self.archive.start()
        self.forwarder.start()
        if self.metrics is not None:
            self.metrics.start()
            log.info("metrics on http://%s:%d/metrics", *self.metrics.address)
        if self.web is not None:
            self.web.start()
            log.info("web pages and API on http://%s:%d/", *self.web.address)
        if self.viewer is not None:
            self.viewer.start()
            log.info("OHIF viewer on http://%s:%d/", *self.viewer.address)
        settle_heap()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop accepting; serve_forever returns, then in-flight stores are drained.

        Only the socketserver loop is stopped here (pynetdicom's own shutdown() also
        unregisters the server from an AE list it was never put on by make_server)."""
        threading.Thread(
            target=socketserver.BaseServer.shutdown, args=(self.server,), daemon=True
        ).start()

    def _shutdown(self) -> None:
        """Stop cleanly: no new association, stores in progress finish (their senders get
        Success), later requests get 0xA700, then open associations are aborted."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.server_close()
        timeout = self.settings.drain_timeout
        if not self.ingest.close(timeout):
            log.error("stores still running after %.0f s; their senders got no Success", timeout)
        active = [a for a in self.server.active_associations if a.is_alive()]
        if active:
            time.sleep(0.2)  # let the last responses leave before the abort
            log.info("aborting %d open association(s)", len(active))
            for assoc in active:
                assoc.abort()
            for assoc in active:
                assoc.join(5)
        self.archive.stop(timeout)
        self.workers.stop(timeout)
        self.encoder.close(timeout)
        self.forwarder.stop(timeout)
        if self.metrics is not None:
            self.metrics.stop()
        if self.web is not None:
            self.web.stop()
        if self.viewer is not None:
            self.viewer.stop()
        logging.getLogger("compacs").removeHandler(self._activity_log)
        self.index.close()
        self.store.close()
        self._release_locks()
        gc.unfreeze()  # what settle_heap froze is collectable again once the node is gone
        log.info("compacs stopped")

    def _close_backends(self) -> None:
        """Undo what __init__ opened when the node cannot start after all."""
        if hasattr(self, "_activity_log"):  # not yet there when the store is refused
            logging.getLogger("compacs").removeHandler(self._activity_log)
        self.index.close()
        self.store.close()
        self._release_locks()

    def _release_locks(self) -> None:
        for lock in self._locks:
            lock.release()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def log_recovery(partial_writes: int, released_jobs: int) -> None:
    """One line on what start-up recovered. Orphan objects (written, never indexed) are
    not counted here: that takes a scan of the whole store (``compacs verify``)."""
    if not partial_writes and not released_jobs:
        log.info("start-up recovery: nothing to recover (no partial write, no claimed job)")
        return
    log.warning(
        "start-up recovery: removed %d partial write(s), queued again %d compression job(s) "
        "claimed before a stop; objects written but never indexed may remain as orphans "
        "(`compacs verify` lists them, --repair-orphans deletes them)",
        partial_writes,
        released_jobs,
    )


def settle_heap() -> None:
    """Move what start-up built (~90k objects: pydicom's and pynetdicom's tables, the
    node's own) out of the cyclic garbage collector's reach, before serving.

    Python's collector runs by allocation counts, and the associations allocate: over
    1000 C-ECHO associations it ran 306 young, 28 middle and one full collection, the full
    one ~40 ms holding the GIL (a whole collection of the start-up heap takes ~27 ms),
    which the association in progress waited out. Those objects live as long as the node;
    frozen (``gc.freeze``), a full collection scans only what serving created. Objects are
    still freed when unreferenced; only cycles among start-up objects stay, as they would.
    """
    gc.collect()
    gc.freeze()
