"""One serving node per data directory and per SQLite index: an advisory lock held for life.

Two ``compacs serve`` on one data directory would both run start-up recovery (each
deleting the other's partial writes), both claim and compress the same jobs, and both
answer on the same index. The second one is refused with a message naming the holder.
The lock is ``flock`` on a file beside what it guards: the kernel drops it when the
process dies, so a kill -9 never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from urllib.parse import urlsplit


class InUse(RuntimeError):
    """Another process holds the lock."""


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``path``; the holder's pid is written in it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InUse(
                f"{self.what} is in use by another compacs serve (pid {holder}, lock "
                f"{self.path}); stop it first, or give this node its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def serving_locks(data_dir: Path, index_url: str) -> list[DirectoryLock]:
    """The locks a serving node holds: its data directory, and its SQLite index when that
    lives elsewhere (PostgreSQL is shared by design and needs none)."""
    locks = [DirectoryLock(data_dir / ".compacs.lock", f"data directory {data_dir}")]
    url = urlsplit(index_url)
    if url.scheme == "sqlite":
        index_path = Path(url.path).resolve()
        if index_path.parent != data_dir.resolve():
            locks.append(
                DirectoryLock(
                    index_path.with_name(index_path.name + ".lock"), f"SQLite index {index_path}"
                )
            )
    return locks
