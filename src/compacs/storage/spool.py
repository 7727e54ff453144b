"""A local spool in front of a remote object store: one PUT per instance, not four.

On PostgreSQL + S3 each compressed instance cost four S3 requests (put the original, get
it to compress, put the compressed copy, delete the original) and ~33 ms of node and S3
server time. :class:`SpooledStore` writes what it is given to a local directory first,
durably (a :class:`~compacs.storage.filesystem.FileStore`: file and directory fsynced), so
``put`` still means durable and a sender may be told Success (PS3.4 B.2.3). Uploader
threads then copy each object to the remote store and drop the local copy:

- an object put with ``settled=False`` (an original the policy will compress soon) is held
  in the spool until :meth:`settle` or ``hold`` seconds: the compression job reads it
  locally, writes its compressed copy (uploaded at once) and deletes the original, which
  never reaches the remote store. An instance that stays as received is uploaded when its
  job ends (``settle``) or when the hold expires.
- reads look in the spool first, then in the remote store;
- a failed upload (the object store is down) keeps the object in the spool, retried with
  backoff: the spool is durable, and C-STORE keeps working while the object store is away
  (until the local disk is full: 0xA700);
- after a restart every spooled object is uploaded again (``recover``); on close the spool
  is flushed (bounded by ``flush_timeout``).

Other nodes of a scale-out cluster see an object once it is uploaded: seconds after it was
stored, and up to ``hold`` seconds for an original waiting for its compression. A node
that dies keeps its spooled objects on its disk until it starts again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from compacs.storage.base import OWNER_KEY, BlobStore
from compacs.storage.filesystem import FileStore

log = logging.getLogger(__name__)

UPLOADERS = 4
"""Concurrent uploads: S3 requests overlap (each waits ~20 ms on the server)."""
RETRY_SECONDS = (1, 2, 5, 10, 30, 60)
"""Backoff between attempts to upload an object while the remote store fails."""


@dataclass
class _Spooled:
    due: float
    """When the object is to be uploaded (epoch seconds, time.monotonic)."""
    uploading: bool = False
    deleted: bool = False
    """Deleted while its upload ran: the uploader deletes the remote copy after it."""
    attempts: int = 0
    writers: int = 1
    """Puts of this key on this node (two associations may store the same instance) that
    :meth:`SpooledStore.forget` has not withdrawn."""


class SpooledStore:
    """A :class:`BlobStore` that writes to ``spool`` (local, durable) and uploads to
    ``remote`` behind the scenes; see the module docstring."""

    def __init__(
        self,
        remote: BlobStore,
        spool: Path,
        *,
        hold: float = 30.0,
        flush_timeout: float = 30.0,
        uploaders: int = UPLOADERS,
    ) -> None:
        """``uploaders`` 0: a view for the command-line tools beside a running node, which
        reads the spool and writes and deletes in the remote store directly."""
        self.remote = remote
        self.spool = FileStore(spool)
        self.url = remote.url
        self.hold = hold
        self.flush_timeout = flush_timeout
        self._entries: dict[str, _Spooled] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"spool-upload-{n}", daemon=True)
            for n in range(uploaders)
        ]
        for thread in self._threads:
            thread.start()

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, data: bytes | Sequence[bytes], *, settled: bool = True) -> None:
        """Durable in the spool on return; uploaded now, or (``settled`` False) once
        :meth:`settle` is called or ``hold`` seconds have passed."""
        if key == OWNER_KEY or not self._threads:  # the marker; a view without uploaders
            self.remote.put(key, data)
            return
        self.spool.put(key, data)
        due = time.monotonic() + (0 if settled else self.hold)
        with self._cond:
            entry = self._entries.get(key)
            if entry is None or entry.uploading:
                self._entries[key] = _Spooled(due)
            else:  # the same bytes put again (keys name their SHA-256)
                entry.writers += 1
                entry.due = min(entry.due, due)
            self._cond.notify()

    def forget(self, key: str) -> None:
        """This writer's copy is not needed: the index kept another copy of the instance
        under the same key (the same bytes stored on two nodes at once). Dropped from the
        spool unless another writer on this node still needs it, and never uploaded: the
        kept copy is the other node's, which its compression may replace and delete."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is None or entry.uploading:
                return
            entry.writers -= 1
            if entry.writers > 0:
                return
            del self._entries[key]
        self.spool.delete(key)

    def settle(self, key: str) -> None:
        """The object is final (its compression is over): upload it now."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None and not entry.uploading:
                entry.due = time.monotonic()
                self._cond.notify()

    def delete(self, key: str) -> None:
        """An object that never left the spool costs no request to the remote store."""
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None and entry.uploading:
                entry.deleted = True  # the uploader deletes both copies when it is done
                return
            self._entries.pop(key, None)
        self.spool.delete(key)
        if entry is None:
            self.remote.delete(key)

    # -- reading: the spool first ------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """From the spool, else the remote store; an object another node has indexed but
        not yet uploaded (it holds it for compression) is waited for, ``hold`` seconds and
        a little more at most, so that a retrieve on any node finds what one node stored."""
        if key == OWNER_KEY:
            return self.remote.get(key)
        deadline = time.monotonic() + (self.hold + 5 if self._threads else 0)
        pause = 0.05
        while True:
            with contextlib.suppress(FileNotFoundError):
                return self.spool.get(key)
            try:
                return self.remote.get(key)
            except FileNotFoundError:
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def open(self, key: str) -> BinaryIO:
        return BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        return self.spool.exists(key) or self.remote.exists(key)

    def local_path(self, key: str) -> Path | None:
        return None  # a spooled file may leave the spool while a sender streams it

    def size(self, key: str) -> int:
        with contextlib.suppress(FileNotFoundError):
            return self.spool.size(key)
        return self.remote.size(key)

    def modified(self, key: str) -> float:
        with contextlib.suppress(FileNotFoundError):
            return self.spool.modified(key)
        return self.remote.modified(key)

    def keys(self) -> Iterator[str]:
        spooled = set(self.spool.keys())
        yield from spooled
        yield from (key for key in self.remote.keys() if key not in spooled)  # noqa: SIM118 - a BlobStore

    def spooled(self) -> int:
        """Objects in the spool not yet uploaded."""
        with self._cond:
            return len(self._entries)

    # -- life cycle --------------------------------------------------------------------------
    def recover(self) -> int:
        """Leftovers of interrupted writes removed; every spooled object queued again (held,
        in case its compression job is still to run)."""
        if not self._threads:
            return 0  # the node's to do
        leftovers = self.spool.recover() + self.remote.recover()
        due = time.monotonic() + self.hold
        with self._cond:
            for key in self.spool.keys():  # noqa: SIM118 - a BlobStore, not a dict
                self._entries.setdefault(key, _Spooled(due))
            self._cond.notify_all()
        return leftovers

    def close(self) -> None:
        """Upload what is spooled (at most ``flush_timeout`` seconds), then stop."""
        if not self._threads:
            self.remote.close()
            return
        deadline = time.monotonic() + self.flush_timeout
        with self._cond:
            for entry in self._entries.values():
                entry.due = min(entry.due, time.monotonic())
            self._cond.notify_all()
            self._cond.wait_for(  # while an upload can still succeed
                lambda: all(e.attempts and not e.uploading for e in self._entries.values()),
                max(0.0, deadline - time.monotonic()),
            )
            left = len(self._entries)
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5)
        if left:
            log.warning(
                "%d object(s) stay in the spool %s until the next start", left, self.spool.root
            )
        self.remote.close()

    # -- uploading ---------------------------------------------------------------------------
    def _next_due(self) -> str | None:
        """The key to upload now, or None (the caller holds the condition)."""
        now = time.monotonic()
        ready = [(e.due, k) for k, e in self._entries.items() if not e.uploading and e.due <= now]
        return min(ready)[1] if ready else None

    def _wait_seconds(self) -> float | None:
        waiting = [e.due for e in self._entries.values() if not e.uploading]
        return max(0.0, min(waiting) - time.monotonic()) if waiting else None

    def _upload_loop(self) -> None:
        while True:
            with self._cond:
                key = self._next_due()
                while key is None and not self._closing:
                    self._cond.wait(self._wait_seconds())
                    key = self._next_due()
                if key is None:
                    return
                entry = self._entries[key]
                entry.uploading = True
            self._upload(key, entry)

    def _upload(self, key: str, entry: _Spooled) -> None:
        try:
            self.remote.put(key, self.spool.get(key))
        except FileNotFoundError:  # deleted from the spool meanwhile: nothing to upload
            with self._cond:
                self._entries.pop(key, None)
                self._cond.notify_all()
            return
        except OSError as exc:
            with self._cond:
                entry.uploading = False
                entry.attempts += 1
                wait = RETRY_SECONDS[min(entry.attempts, len(RETRY_SECONDS)) - 1]
                entry.due = time.monotonic() + wait
                if entry.deleted:
                    self._entries.pop(key, None)
            log.warning("upload of %s to %s failed, again in %d s: %s", key, self.url, wait, exc)
            if entry.deleted:
                self.spool.delete(key)
            return
        with self._cond:
            self._entries.pop(key, None)
            self._cond.notify_all()
        self.spool.delete(key)
        if entry.deleted:
            self.remote.delete(key)
