"""The archive tier's background pass: queue archive jobs for instances old enough.

Every ``interval`` seconds, inside the policy's idle window, up to ``batch`` instances of
the ingest tier stored more than ``[compression.archive] after_days`` ago get an
archive-tier job; the compression workers take those only when nothing is being received
and no ingest-tier job is pending (:mod:`compacs.jobs.workers`), and re-encode each with
the tier's ``smallest`` (:meth:`compacs.rules.Policy.archive_verdict`). Without
``after_days`` the pass does nothing (``compacs compress --archive`` still applies the
tier on demand).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from compacs.index import CompressionQueue, IndexUnavailable
from compacs.rules import ArchiveTier

log = logging.getLogger(__name__)

INTERVAL = 60.0
"""Seconds between passes: the tier works on old data, nothing about it is urgent."""
BATCH = 200
"""Jobs queued at most per pass: the queue stays short, ingest jobs are never behind many."""


def stored_before(tier: ArchiveTier, now: datetime) -> str | None:
    """The ISO UTC time before which an instance is old enough for the tier (the index's
    ``stored_at`` format), or None when the tier has no age (``after_days`` absent)."""
    if tier.after_days is None:
        return None
    cutoff = now.astimezone(UTC) - timedelta(days=tier.after_days)
    return cutoff.isoformat(timespec="milliseconds")


def local_minute(now: datetime) -> int:
    """Minutes after local midnight (the idle window is in local time)."""
    local = now.astimezone()
    return local.hour * 60 + local.minute


def queue_due(index: CompressionQueue, tier: ArchiveTier, now: datetime, batch: int = BATCH) -> int:
    """One pass: queue archive jobs for up to ``batch`` instances old enough, when ``now``
    is inside the idle window. Returns how many were queued."""
    cutoff = stored_before(tier, now)
    if cutoff is None or not tier.in_window(local_minute(now)):
        return 0
    return index.queue_archive(cutoff, batch, now.timestamp())


class ArchivePass:
    """A daemon thread running :func:`queue_due` every ``interval`` seconds."""

    def __init__(
        self,
        index: CompressionQueue,
        tier: ArchiveTier,
        queued: Callable[[], None],
        interval: float = INTERVAL,
        batch: int = BATCH,
    ) -> None:
        self.index = index
        self.tier = tier
        self.queued = queued
        self.interval = interval
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.tier.after_days is None:
            return
        self._thread = threading.Thread(target=self._run, name="archive-tier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        """A pass at start, then one every ``interval`` seconds."""
        while not self._stop.is_set():
            try:
                queued = queue_due(self.index, self.tier, datetime.now(UTC), self.batch)
            except IndexUnavailable as exc:
                log.warning("archive tier: could not queue jobs: %s", exc)
                queued = 0
            except Exception:
                log.exception("archive tier: pass failed")
                queued = 0
            if queued:
                log.info("archive tier: %d instance(s) queued", queued)
                self.queued()
            self._stop.wait(self.interval)
