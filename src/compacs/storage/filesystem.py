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

Intents (:meth:`FileStore.intent`): before a write whose object the index references
only after a later commit (a received object, a compressed copy) or which is deleted
after one (a replaced original), the keys involved are noted (no fsync: it guards
against a killed process, whose written files survive; a power failure may also lose
the note, and leaves at worst an orphan), and noted again as done when the step ends.
The notes are lines appended to a log of the process's own (:class:`IntentLog`: a file
made and removed per step cost ~0.3 ms of each C-STORE, issue 15); logs a crash left
are settled at start-up: every key noted and not done that the index does not
reference is deleted (:func:`compacs.jobs.compress.settle_intents`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from compacs.storage.base import OWNER_KEY, StorageFull, parts_of
from compacs.storage.keys import validate_key

TMP_DIR = ".tmp"
INTENTS_DIR = ".intents"
"""The notes of :meth:`FileStore.intent`, beside TMP_DIR (never a key)."""
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirectorySync:
    """Group fsync of one directory: callers whose renames overlap share one fsync.

    A caller counts its rename (done before it calls), then either sees an fsync that
    began after its count completed, or runs one itself covering every rename counted
    so far; while one runs, the others wait for it (the group commit of file systems)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.counted = 0  # renames counted
        self.synced = 0  # renames covered by a completed fsync
        self.running = False
        self.users = 0

    def sync(self, directory: Path) -> None:
        with self.changed:
            self.counted += 1
            mine = self.counted
            while self.synced < mine:
                if not self.running:
                    self.running, covers = True, self.counted
                    break
                self.changed.wait()
            else:
                return
        try:
            _fsync_dir(directory)
        except BaseException:
            with self.changed:
                self.running = False
                self.changed.notify_all()
            raise
        with self.changed:
            self.running = False
            self.synced = max(self.synced, covers)
            self.changed.notify_all()


class _DirectorySyncs:
    """One :class:`_DirectorySync` per directory while anyone syncs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[Path, _DirectorySync] = {}

    def sync(self, directory: Path) -> None:
        """fsync ``directory`` after a rename into it (shared with overlapping callers)."""
        with self._lock:
            state = self._dirs.setdefault(directory, _DirectorySync())
            state.users += 1
        try:
            state.sync(directory)
        finally:
            with self._lock:
                state.users -= 1
                if not state.users:
                    del self._dirs[directory]


def _raise_full(exc: OSError, what: str) -> None:
    """Raise ``exc`` as StorageFull when the file system is full (the caller re-raises
    it as it is otherwise)."""
    if exc.errno in _NO_SPACE:
        raise StorageFull(exc.errno, f"no space left for {what}: {exc.strerror}") from exc


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


class IntentLog:
    """The intents of one process: lines ``+KEY`` (a step begins) and ``-KEY`` (it
    ended) appended to a file in ``directory``. A log past :attr:`ROTATE_AT` bytes is
    followed by a new one, and removed once its last step has ended."""

    ROTATE_AT = 1 << 20

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._current: _Log | None = None
        self._live: set[Path] = set()

    def begin(self, keys: Sequence[str]) -> _Log | None:
        """Note the step on ``keys``; None when it could not be noted (a full disk)."""
        lines = "".join(f"+{k}\n" for k in keys).encode("ascii")
        with self._lock:
            try:
                log = self._writable()
                os.write(log.fd, lines)
            except OSError:
                return None
            log.size += len(lines)
            log.open += 1
            return log

    def end(self, log: _Log, keys: Sequence[str]) -> None:
        """Note the step on ``keys`` ended (begun in ``log``)."""
        lines = "".join(f"-{k}\n" for k in keys).encode("ascii")
        with self._lock:
            with contextlib.suppress(OSError):
                os.write(log.fd, lines)
                log.size += len(lines)
            log.open -= 1
            if log is not self._current and log.open == 0:
                self._close(log)

    def live(self) -> set[Path]:
        """The logs this process writes (never a crash's leftover)."""
        with self._lock:
            return set(self._live)

    def _writable(self) -> _Log:
        current = self._current
        if current is not None and current.size < self.ROTATE_AT:
            return current
        path = self._directory / f"{uuid.uuid4().hex}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        self._current = _Log(path, fd)
        self._live.add(path)
        if current is not None and current.open == 0:
            self._close(current)
        return self._current

    def _close(self, log: _Log) -> None:
        with contextlib.suppress(OSError):
            os.close(log.fd)
        _remove(log.path)
        self._live.discard(log.path)


@dataclass
class _Log:
    path: Path
    fd: int
    size: int = 0
    open: int = 0
    """Steps begun in this log and not yet ended."""


def unsettled(text: str) -> list[str]:
    """The keys of an intent log (or of an older one-note file, a key a line) noted and
    not noted done, in the order first noted."""
    count: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("-"):
            count[line[1:]] = count.get(line[1:], 0) - 1
        elif line:
            key = line.removeprefix("+")
            count[key] = count.get(key, 0) + 1
    return [key for key, n in count.items() if n > 0]


def intent(store: object, keys: Sequence[str]) -> contextlib.AbstractContextManager[None]:
    """``store``'s note of ``keys`` that a crash in the ``with`` block may leave
    unreferenced (:meth:`FileStore.intent`); nothing for stores without local files."""
    return store.intent(keys) if isinstance(store, FileStore) else contextlib.nullcontext()


class FileStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / TMP_DIR
        self._intents = self.root / INTENTS_DIR
        self._intent_log = IntentLog(self._intents)
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._dir_syncs = _DirectorySyncs()
        self._ensure_dir(self._tmp)
        self._ensure_dir(self._intents)

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
    def put(self, key: str, data: bytes | Sequence[bytes], *, settled: bool = True) -> None:
        self._path(key)  # an unsafe key fails before anything is written
        self.adopt(key, self.stage(data))

    def stage(self, data: bytes | Sequence[bytes]) -> Path:
        """The first half of :meth:`put`: ``data`` written to a new file in
        :attr:`spool_dir` and fsynced; :meth:`adopt` completes it under a key. It may
        run while the caller still works out the key (parse, hash: ``Ingest``)."""
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
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
        except OSError as exc:
            _remove(tmp)
            _raise_full(exc, "a new object")
            raise
        return tmp

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
        except OSError as exc:
            _remove(tmp)
            _raise_full(exc, key)
            raise
        except BaseException:
            _remove(tmp)
            raise

    def _place(self, tmp: Path, final: Path) -> None:
        """Rename the fsynced ``tmp`` to ``final`` and make the new entry durable (one
        directory fsync shared by the renames into that directory that overlap: a
        received object and a compressed copy of the same series, concurrent senders)."""
        os.replace(tmp, final)
        self._dir_syncs.sync(final.parent)

    def settle(self, key: str) -> None:
        pass  # written where it stays

    def forget(self, key: str) -> None:
        pass  # the key may be the kept copy itself

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
                dirnames[:] = [d for d in dirnames if d not in (TMP_DIR, INTENTS_DIR)]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                key = (rel / name).as_posix()
                if key != OWNER_KEY:
                    yield key

    def recover(self) -> int:
        """Remove partial writes (the intents stay for :meth:`intents`)."""
        leftovers = 0
        for entry in self._tmp.iterdir():
            entry.unlink(missing_ok=True)
            leftovers += 1
        return leftovers

    # -- intents (module docstring) --------------------------------------------------------
    @contextlib.contextmanager
    def intent(self, keys: Sequence[str]) -> Iterator[None]:
        """Note ``keys`` for the ``with`` block: the note goes when the block ends (its
        code cleans up after its own errors), and stays when the process dies there
        (settled at the next start). A note that cannot be written (a full disk) is
        skipped: it guards against orphans, not against loss."""
        keys = [validate_key(k) for k in keys]
        log = self._intent_log.begin(keys)
        try:
            yield
        finally:
            if log is not None:
                self._intent_log.end(log, keys)

    def intents(self) -> list[tuple[Path, list[str]]]:
        """The intent logs a crash left: (log, keys noted and not done)."""
        live = self._intent_log.live()
        found = []
        for note in sorted(self._intents.iterdir()):
            if note not in live:
                found.append((note, unsettled(note.read_text("ascii", errors="replace"))))
        return found

    def close(self) -> None:
        pass

    def modified(self, key: str) -> float:
        return self._path(key).stat().st_mtime
