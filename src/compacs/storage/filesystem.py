"""Filesystem blob store: one file per object under a root directory.

Durability of ``put`` (what makes a C-STORE Success honest): write to a temporary file
in the same file system, fsync it, rename it over the final name, fsync the directory,
and fsync every directory newly created on the way. A crash leaves either the whole
object or a temporary file that :meth:`FileStore.recover` removes at start-up.

A file made elsewhere (a compression worker process writes its encoding into
:attr:`FileStore.spool_dir` and fsyncs it) is put in place by :meth:`FileStore.adopt`:
the rename and the directory fsync of ``put`` without a copy.

``delete`` does not fsync the directory: nothing is acknowledged by a deletion, and a
deletion undone by a power failure leaves an unreferenced object (an orphan, listed and
removed by ``compacs verify --repair-orphans``), never a lost instance.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from compacs.storage.base import OWNER_KEY, StorageFull, parts_of, validate_key

TMP_DIR = ".tmp"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / TMP_DIR
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._ensure_dir(self._tmp)

    @classmethod
    def from_url(cls, url: str) -> FileStore:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r}: file URLs must name a local path")
        return cls(unquote(parts.path))

    # -- helpers -------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents, each made durable in its parent."""
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            missing: list[Path] = []
            d = directory
            while not d.is_dir():
                missing.append(d)
                d = d.parent
            for d in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    d.mkdir()
                _fsync_dir(d.parent)
            self._known_dirs.add(directory)

    # -- BlobStore -----------------------------------------------------------------------
    def put(self, key: str, data: bytes | Sequence[bytes]) -> None:
        final = self._path(key)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            self._ensure_dir(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for part in parts_of(data):
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._place(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise StorageFull(exc.errno, f"no space left for {key}: {exc.strerror}") from exc
            raise

    @property
    def spool_dir(self) -> Path:
        """Where another process may write a file for :meth:`adopt` (same file system;
        whatever is left there is removed by :meth:`recover`)."""
        return self._tmp

    def adopt(self, key: str, path: Path | str) -> None:
        """Make the fsynced file ``path`` (in :attr:`spool_dir`) the object ``key``:
        durable on return, as after :meth:`put`; the file is gone either way."""
        tmp = Path(path)
        if tmp.parent != self._tmp:
            raise ValueError(f"{tmp} is not in the store's spool directory {self._tmp}")
        try:
            final = self._path(key)
            self._ensure_dir(final.parent)
            self._place(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _place(tmp: Path, final: Path) -> None:
        """Rename the fsynced ``tmp`` to ``final`` and make the new entry durable."""
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def delete(self, key: str) -> None:
        """Unlink the object; no directory fsync (see the module docstring)."""
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                key = (rel / name).as_posix()
                if key != OWNER_KEY:
                    yield key

    def recover(self) -> int:
        leftovers = 0
        for entry in self._tmp.iterdir():
            entry.unlink(missing_ok=True)
            leftovers += 1
        return leftovers

    def close(self) -> None:
        pass

    def modified(self, key: str) -> float:
        return self._path(key).stat().st_mtime
