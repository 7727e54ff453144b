"""Forwarders: threads that take due items from the forwarding queue and deliver them.

Each turn takes a batch of one destination and one study (oldest first), sends it on one
association and records every item's outcome in the index. A destination that cannot be
reached is backed off as a whole, so that a study is delivered in order once it is back;
an instance the destination refuses is retried with exponential backoff, then parked as
``failed`` (``compacs queue retry`` brings it back). Items with ``commit`` are done only
when the destination's Storage Commitment report says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from compacs.dicom.ae import Peer
from compacs.index import Catalogue, ForwardItem, ForwardOutcome, ForwardQueue
from compacs.index.forward_state import ForwardState
from compacs.logs import IN_FORWARDING_QUEUE
from compacs.net.storage_scu import Link, Sent, proposal, report_outcome
from compacs.routing import Routing
from compacs.storage import BlobStore

log = logging.getLogger(__name__)


class ForwardingIndex(ForwardQueue, Catalogue, Protocol):
    """The roles of the index the forwarders use: the queue, and the catalogue to remove
    instances whose retention after delivery has passed."""


REPORT_WAIT = 5.0
"""Seconds to keep the association open for a commitment report on it."""
LINGER = 1.0
"""Seconds an idle association waits for more instances before it is released."""


class Forwarder:
    def __init__(
        self,
        index: ForwardingIndex,
        store: BlobStore,
        routing: Routing,
        ae_title: str,
        *,
        threads: int = 2,
        poll: float = 1.0,
        node: str = "local",
    ) -> None:
        self.index = index
        self.store = store
        self.routing = routing
        self.ae_title = ae_title
        self.threads = threads
        self.poll = poll
        self._wake = threading.Event()
        self._more_due = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._busy: Counter[str] = Counter()
        self._down_until: dict[str, float] = {}
        self._reports: dict[str, threading.Event] = {}
        self._workers: list[threading.Thread] = []
        self._prefix = node

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        released = self.index.release_forward_claims(
            time.time() - self.routing.commit_timeout, node=self._prefix
        )
        if released:
            log.warning("%d forwarding item(s) interrupted by a stop: queued again", released)
        self.apply_retention()
        for n in range(self.threads):
            thread = threading.Thread(
                target=self._run, args=(f"{self._prefix}:fwd{n}",), name=f"forward-{n}", daemon=True
            )
            thread.start()
            self._workers.append(thread)

    def wake(self) -> None:
        self._wake.set()
        self._more_due.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- commitment reports (on our association or on one of the destination's) ----------
    def on_report(self, info: Dataset, event_type: int) -> None:
        transaction, committed, failed = report_outcome(info)
        changed = self.index.commitment_result(transaction, committed, failed)
        log.info(
            "Storage Commitment report %s: %d committed, %d failed (%d queue items)",
            transaction,
            len(committed),
            len(failed),
            changed,
        )
        with self._lock:
            arrived = self._reports.get(transaction)
        if arrived is not None:
            arrived.set()
        self.apply_retention()

    # -- retention ---------------------------------------------------------------------
    def apply_retention(self) -> int:
        """Delete local copies whose every delivery is done and whose time has come."""
        removed = 0
        for pk in self.index.retention_due(time.time()):
            key = self.index.delete_instance(pk)
            if key is not None:
                self.store.delete(key)
                removed += 1
        if removed:
            log.info("retention: %d forwarded instance(s) deleted locally", removed)
        return removed

    # -- the loop ----------------------------------------------------------------------
    def _skip(self, now: float) -> frozenset[str]:
        with self._lock:
            full = {d for d, n in self._busy.items() if n >= self.routing.associations}
            down = {d for d, t in self._down_until.items() if t > now}
        return frozenset(full | down)

    def _run(self, worker: str) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            try:
                items = self.index.claim_forwards(worker, now, self.routing.batch, self._skip(now))
            except Exception:
                log.exception("could not claim forwarding items")
                items = []
            if not items:
                if time.monotonic() - last_sweep > 60:
                    last_sweep = time.monotonic()
                    self._sweep()
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            destination = items[0]["destination"]
            with self._lock:
                self._busy[destination] += 1
            try:
                self._deliver(destination, items, worker)
            except Exception:  # never let a peer or a file take the forwarder down
                log.exception("forwarding to %s failed", destination)
            finally:
                with self._lock:
                    self._busy[destination] -= 1
            self._wake.set()  # more may be due: let the next turn look at once

    def _sweep(self) -> None:
        try:
            self.index.release_forward_claims(time.time() - self.routing.commit_timeout)
            self.apply_retention()
        except Exception:
            log.exception("forwarding queue sweep failed")

    def _retry(self, item: ForwardItem, error: str) -> ForwardOutcome:
        """The outcome of a failed attempt: pending again later, or parked."""
        if item["attempts"] >= self.routing.max_attempts:
            log.error(
                "forwarding %s to %s parked after %d attempts: %s",
                item["sop_instance_uid"],
                item["destination"],
                item["attempts"],
                error,
                extra=IN_FORWARDING_QUEUE,
            )
            return {"pk": item["pk"], "state": ForwardState.FAILED, "error": error}
        until = self.routing.retry_at(time.time(), item["attempts"])
        return {
            "pk": item["pk"],
            "state": ForwardState.PENDING,
            "not_before": until,
            "error": error,
        }

    def _deliver(self, destination: str, items: list[ForwardItem], worker: str) -> None:
        """Send ``items``, then whatever else becomes due for the destination while the
        association is open (a stream of instances shares one association)."""
        peer = Peer.parse(destination)
        link: Link | None = None
        try:
            while items:
                if link is None or not link.established or not link.carries(items):
                    if link is not None:
                        link.close()
                    commit = any(item["commit"] for item in items)
                    link = Link(self.ae_title, peer, proposal(items, commit), self.on_report)
                    if not link.established:
                        self._unreachable(destination, items)
                        return
                    with self._lock:
                        self._down_until.pop(destination, None)
                self._send_batch(link, items)
                items = self._more(destination, worker)
        finally:
            if link is not None:
                link.close()

    def _more(self, destination: str, worker: str) -> list[ForwardItem]:
        """Due items for the same destination, waiting a moment for them to come."""
        deadline = time.monotonic() + LINGER
        while not self._stop.is_set():
            items = self.index.claim_forwards(
                worker, time.time(), self.routing.batch, frozenset(), only=destination
            )
            if items or time.monotonic() >= deadline:
                return items
            self._more_due.wait(max(0.0, deadline - time.monotonic()))
            self._more_due.clear()
        return []

    def _unreachable(self, destination: str, items: list[ForwardItem]) -> None:
        error = f"no association with {destination} (refused or unreachable)"
        log.warning("%s; %d item(s) wait", error, len(items), extra=IN_FORWARDING_QUEUE)
        outcomes = [self._retry(i, error) for i in items]
        self._back_off(destination, outcomes)
        self.index.finish_forwards(outcomes)

    def _back_off(self, destination: str | Peer, outcomes: list[ForwardOutcome]) -> None:
        """The destination is gone: nothing more for it until the earliest retry, so
        that its studies stay in order."""
        until = min((o["not_before"] for o in outcomes if "not_before" in o), default=0.0)
        if until:
            with self._lock:
                self._down_until[str(destination)] = until
            self.index.defer_destination(str(destination), until)

    def _send_batch(self, link: Link, items: list[ForwardItem]) -> None:
        outcomes: list[ForwardOutcome] = []
        to_commit: list[tuple[ForwardItem, Sent]] = []
        try:
            for n, item in enumerate(items):
                if self._stop.is_set():  # the node stops: the rest waits for the next start
                    outcomes += [{"pk": i["pk"], "state": ForwardState.PENDING} for i in items[n:]]
                    break
                try:
                    sent = link.send(item, self.store)
                except Exception as exc:  # unreadable object, failed transcode
                    log.warning(
                        "cannot send %s: %s",
                        item["sop_instance_uid"],
                        exc,
                        extra=IN_FORWARDING_QUEUE,
                    )
                    sent = Sent(False, -1, error=f"{type(exc).__name__}: {exc}"[:300])
                if sent.delivered and item["commit"]:
                    to_commit.append((item, sent))
                elif sent.delivered:
                    outcomes.append(self._done(item, sent, ForwardState.DONE))
                elif sent.status is None and not link.established:
                    lost = [self._retry(i, sent.error or "lost") for i in items[n:]]
                    outcomes += lost
                    self._back_off(link.peer, lost)
                    break
                else:
                    outcomes.append(self._retry(item, sent.error or "not delivered"))
            if to_commit:
                outcomes += self._request_commitment(link, to_commit)
        finally:
            handled = {o["pk"] for o in outcomes} | {i["pk"] for i, _ in to_commit}
            outcomes += [self._retry(i, "interrupted") for i in items if i["pk"] not in handled]
            self.index.finish_forwards(outcomes)
        delivered = sum(
            1 for o in outcomes if o["state"] in (ForwardState.DONE, ForwardState.COMMITTING)
        )
        log.info("forwarded %d of %d instance(s) to %s", delivered, len(items), link.peer)
        if any(o["state"] == ForwardState.DONE for o in outcomes):
            self.apply_retention()

    @staticmethod
    def _done(item: ForwardItem, sent: Sent, state: ForwardState) -> ForwardOutcome:
        return {"pk": item["pk"], "state": state, "syntax": sent.syntax, "bytes": sent.size}

    def _request_commitment(
        self, link: Link, delivered: list[tuple[ForwardItem, Sent]]
    ) -> list[ForwardOutcome]:
        """Record the items as waiting for the report first (it may come at once, on any
        association), then ask; on a refusal they are sent again later."""
        transaction = generate_uid()
        waiting: list[ForwardOutcome] = [
            {**self._done(i, s, ForwardState.COMMITTING), "transaction_uid": transaction}
            for i, s in delivered
        ]
        arrived = threading.Event()
        with self._lock:
            self._reports[transaction] = arrived
        try:
            self.index.finish_forwards(waiting)
            refs = [
                (i["sop_class_uid"], s.sop_instance_uid)
                for i, s in delivered
                if s.sop_instance_uid  # every delivered one names what the destination holds
            ]
            problem = link.request_commitment(transaction, refs)
            if problem is not None:
                log.warning("%s: %s", link.peer, problem, extra=IN_FORWARDING_QUEUE)
                return [self._retry(i, problem) for i, _ in delivered]
            arrived.wait(REPORT_WAIT)
            return []
        finally:
            with self._lock:
                self._reports.pop(transaction, None)
