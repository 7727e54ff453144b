"""SQLite index backend: the embedded default.

WAL mode lets C-FIND and stats read while the writer commits; ``synchronous=FULL``
makes each commit durable before the C-STORE response (PS3.4 B.2.3: Success means
the SCP has stored the instance). Writes go through one :class:`GroupCommitter`; a batch
of queue claims only (harmless to lose, see :mod:`compacs.index.group_commit`) commits
with ``synchronous=NORMAL``: no WAL sync of its own, durable with the next FULL commit.
So does each transaction of a bulk load (:meth:`SqliteIndex.loader`), made durable at its
end by one checkpoint into the file. The functions at the end work on an index file as a
whole (how many instances, no other user), for replacing it by a rebuilt one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from compacs.index.base import IndexUnavailable
from compacs.index.group_commit import GroupCommitter
from compacs.index.schema import SCHEMA_VERSION, SQLITE, migrations
from compacs.index.sql import SqlIndex, SqlStatements
from compacs.query import Query


class SqliteIndex(SqlIndex):
    _errors = sqlite3.Error
    _lazy_load = True

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sql = SqlStatements("?")
        self._local = threading.local()
        self._migrate()
        self._writer = GroupCommitter(
            self._connect,
            begin=("PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"),
            lazy_begin=("PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE"),
        )

    @classmethod
    def from_url(cls, url: str) -> SqliteIndex:
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc:  # sqlite://relative/path is a common slip; be explicit
            raise ValueError(f"index URL {url!r}: use sqlite:///absolute/path.sqlite")
        if not path:
            raise ValueError(f"index URL {url!r}: no database path")
        return cls(path)

    def _connect(self) -> _AutocommitConnection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # The GroupCommitter issues BEGIN/COMMIT itself; give it commit()/rollback().
        return _AutocommitConnection(conn)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        yield self._reader()

    def _reader(self) -> sqlite3.Connection:
        """This thread's reader (SQLite connections are cheap; a thread's ends with it)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA busy_timeout=30000")
            # PS3.4 C.2.2.2.4: wildcard matching is case-sensitive (SQLite's LIKE is not)
            conn.execute("PRAGMA case_sensitive_like=ON")
            self._local.conn = conn
        return conn

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # a migration may rebuild a table (drop, rename) that others reference
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: index schema version {current} is newer than this "
                    f"compacs ({SCHEMA_VERSION}); upgrade compacs"
                )
            for version, statements in sorted(migrations(SQLITE).items()):
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            if current and current < SCHEMA_VERSION:
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:  # a rebuilt table lost rows that others reference
                    raise RuntimeError(f"{self.path}: migration broke references: {broken[:5]}")
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _loaded(self) -> None:
        """The load into the file itself (its transactions skipped their WAL sync), synced:
        the file alone is the whole index (what replacing an index file needs)."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index checkpoint failed: {exc}") from exc
        finally:
            conn.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def find(self, query: Query) -> Generator[dict[str, Any], None, None]:
        try:
            conn = sqlite3.connect(self.path, timeout=30)  # a generator may outlive a turn
            conn.execute("PRAGMA case_sensitive_like=ON")
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index read failed: {exc}") from exc
        try:
            cur = conn.cursor()
            yield from self._rows(self._sql.find(cur, query))
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        conn = self._reader()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")  # one snapshot for every figure
            return self._sql.stats(cur)
        finally:
            conn.rollback()
            cur.close()

    def close(self) -> None:
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def sqlite_url(path: Path) -> str:
    """The index URL of the SQLite file at ``path`` (what :meth:`SqliteIndex.from_url` reads)."""
    return "sqlite://" + quote(str(Path(path).resolve()))


def count_instances(path: Path) -> int:
    """Instances in the SQLite index at ``path`` (0 when absent or never used), without
    opening it as an index (which would make the file, or migrate it)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise IndexUnavailable(f"{path}: cannot read the index: {exc}") from None
    finally:
        conn.close()


def quiesce(path: Path) -> None:
    """Make sure no process has the index at ``path`` open and its WAL is folded into
    the file (so the file alone is the whole index); IndexUnavailable otherwise."""
    if not path.exists():
        return
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")  # fails while any other connection is open
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        raise IndexUnavailable(
            f"{path} is in use ({exc}): stop the node (and any other compacs command) first"
        ) from None
    finally:
        conn.close()
    if Path(f"{path}-wal").exists():
        raise IndexUnavailable(f"{path}: its write-ahead log could not be folded in; try again")


class _AutocommitConnection:
    """A sqlite3 connection in autocommit mode whose commit/rollback issue SQL."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()
