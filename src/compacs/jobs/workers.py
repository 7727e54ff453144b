"""Compression workers: threads that claim due jobs from the index and compress them.

Each thread claims a job, reads the stored object, hands the CPU part to the compressor's
encoder (worker processes, :mod:`compacs.jobs.pool`) and waits without the GIL, then
writes the result and switches the index. Jobs live in the index, so pending work
survives a restart.

Receiving comes first: while C-STOREs arrive (``receiving()``), only the first thread
works, so that the node's receiving threads keep a core and the codecs get the other
(issue 15: with every worker process busy beside a sender, the default policy
acknowledged at 0.53x Orthanc's rate, compression off at 0.65x); the others join in once
the senders pause. Archive-tier jobs (:mod:`compacs.jobs.archive`) are claimed only while
no C-STORE arrives and no ingest-tier job is pending (the index checks that), so that the
archive tier never delays ingest; their encoding runs in the same worker processes
(nice 10), which retrieve's decoding shares.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from compacs.index import InstanceFacts
from compacs.index.schema import INGEST_TIER
from compacs.jobs.compress import CompressionIndex, Compressor, settle_intents
from compacs.jobs.pool import PoolClosed

log = logging.getLogger(__name__)

RECEIVING_CHECK = 0.05
"""Seconds between a waiting thread's looks at whether the senders paused."""


class CompressionWorkers:
    def __init__(
        self,
        compressor: Compressor,
        index: CompressionIndex,
        count: int,
        poll: float = 0.5,
        on_done: Callable[[], None] | None = None,
        node: str = "local",
        receiving: Callable[[], bool] = lambda: False,
    ):
        """``node`` names this node in claims (``host:port``): at its start it frees only
        the jobs it held itself, not those of other nodes sharing the index.
        ``receiving()`` is True while C-STOREs arrive (module docstring)."""
        self.compressor = compressor
        self.receiving = receiving
        self.on_done = on_done
        self.index = index
        self.count = count
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._prefix = node
        self.retry_after = 2.0

    def start(self) -> None:
        """Start-up recovery, then the threads: objects a crash left unreferenced are
        deleted (:func:`settle_intents`) and this node's claimed jobs queued again."""
        settle_intents(self.compressor.store, self.index)
        released = self.index.release_claims(self._prefix)
        if released:
            log.warning("%d compression job(s) interrupted by a stop: queued again", released)
        for n in range(self.count):
            thread = threading.Thread(
                target=self._run,
                args=(f"{self._prefix}:{n}", n == 0),
                name=f"compress-{n}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, worker: str, first: bool) -> None:
        while not self._stop.is_set():
            if not first and self.receiving():
                self._stop.wait(RECEIVING_CHECK)  # the first thread goes on meanwhile
                continue
            try:
                # archive-tier jobs only while no C-STORE arrives (issue 16)
                jobs = self.index.claim_jobs(worker, 1, time.time(), not self.receiving())
            except Exception:
                log.exception("could not claim compression jobs")
                jobs = []
            if not jobs:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            try:
                self._process(jobs)
            except PoolClosed:  # the node stops: the claim is released at the next start
                return
            if self.on_done is not None:
                self.on_done()

    def _process(self, jobs: list[InstanceFacts]) -> None:
        """Process the claimed ``jobs`` in turn. A job whose outcome the index could not record
        (the database went away: the compressor records failures too, so only that gets
        here) stays claimed by this worker and is processed again once the index answers;
        processing is idempotent (see ``finish_job``). The worker never dies of it."""
        while jobs and not self._stop.is_set():
            facts = jobs[0]
            try:
                self.compressor.process(facts, tier=facts.get("job_tier", INGEST_TIER))
            except PoolClosed:
                raise
            except Exception as exc:
                log.warning(
                    "compression of %s not recorded (%s: %s): tried again in %.0f s",
                    facts["sop_instance_uid"],
                    type(exc).__name__,
                    exc,
                    self.retry_after,
                )
                self._stop.wait(self.retry_after)
                continue
            jobs.pop(0)
