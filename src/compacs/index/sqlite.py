"""SQLite index backend: the embedded default.

WAL mode lets C-FIND and stats read while the writer commits; ``synchronous=FULL``
makes each commit durable before the C-STORE response (PS3.4 B.2.3: Success means
the SCP has stored the instance). Writes go through one :class:`GroupCommitter`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from compacs.index.base import (
    AddResult,
    Duplicates,
    Forward,
    IndexUnavailable,
    InstanceFacts,
    InstanceLocation,
    NewInstance,
    ObjectChange,
)
from compacs.index.group_commit import GroupCommitter
from compacs.index.schema import SCHEMA_VERSION, migrations
from compacs.index.sql import SqlStatements
from compacs.query import Query


class SqliteIndex:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sql = SqlStatements("?")
        self._local = threading.local()
        self._migrate()
        self._writer = GroupCommitter(self._connect, begin="BEGIN IMMEDIATE")

    @classmethod
    def from_url(cls, url: str) -> SqliteIndex:
        parts = urlsplit(url)
        path = unquote(parts.path)
        if parts.netloc:  # sqlite://relative/path is a common slip; be explicit
            raise ValueError(f"index URL {url!r}: use sqlite:///absolute/path.sqlite")
        if not path:
            raise ValueError(f"index URL {url!r}: no database path")
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # The GroupCommitter issues BEGIN/COMMIT itself; give it commit()/rollback().
        return _AutocommitConnection(conn)

    def _reader(self) -> sqlite3.Connection:
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
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: index schema version {current} is newer than this "
                    f"compacs ({SCHEMA_VERSION}); upgrade compacs"
                )
            for version, statements in sorted(migrations("INTEGER PRIMARY KEY").items()):
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- Index ---------------------------------------------------------------------------
    def add_instance(self, instance: NewInstance, duplicates: Duplicates) -> AddResult:
        try:
            return self._writer.submit(
                lambda cur: self._sql.add_instance(cur, instance, duplicates)
            )
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index commit failed: {exc}") from exc

    def _write(self, work):
        try:
            return self._writer.submit(work)
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index commit failed: {exc}") from exc

    def claim_jobs(self, worker: str, limit: int, now: float) -> list[InstanceFacts]:
        return self._write(lambda cur: self._sql.claim_jobs(cur, worker, limit, now))

    def claim_instance(self, sop_instance_uid: str, worker: str) -> InstanceFacts | None:
        return self._write(lambda cur: self._sql.claim_instance(cur, sop_instance_uid, worker))

    def finish_job(
        self, pk: int, old_key: str, change: ObjectChange | None, state: str, note: str | None
    ) -> bool:
        return self._write(lambda cur: self._sql.finish_job(cur, pk, old_key, change, state, note))

    def delete_instance(self, pk: int) -> str | None:
        return self._write(lambda cur: self._sql.delete_instance(cur, pk))

    def release_claims(self) -> int:
        return self._write(self._sql.release_claims)

    # -- forwarding queue --------------------------------------------------------------
    def enqueue_forwards(self, instance_pks: list[int], forward: Forward) -> int:
        return self._write(lambda cur: self._sql.enqueue_forwards(cur, instance_pks, forward))

    def claim_forwards(
        self, worker: str, now: float, limit: int, skip: frozenset[str], only: str | None = None
    ) -> list[dict[str, Any]]:
        return self._write(
            lambda cur: self._sql.claim_forwards(cur, worker, now, limit, skip, only)
        )

    def finish_forwards(self, outcomes: list[dict[str, Any]]) -> None:
        self._write(lambda cur: self._sql.finish_forwards(cur, outcomes))

    def defer_destination(self, destination: str, until: float) -> None:
        self._write(lambda cur: self._sql.defer_destination(cur, destination, until))

    def commitment_result(self, transaction_uid: str, committed: set[str], failed: set[str]) -> int:
        return self._write(
            lambda cur: self._sql.commitment_result(cur, transaction_uid, committed, failed)
        )

    def forward_items(self, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return self._read(lambda cur: self._sql.forward_items(cur, state, limit))

    def requeue_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int:
        return self._write(lambda cur: self._sql.requeue_forwards(cur, pks, states))

    def drop_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int:
        return self._write(lambda cur: self._sql.drop_forwards(cur, pks, states))

    def release_forward_claims(self, stale_commit_before: float, sending: bool) -> int:
        return self._write(
            lambda cur: self._sql.release_forward_claims(cur, stale_commit_before, sending)
        )

    def retention_due(self, now: float) -> list[int]:
        return self._read(lambda cur: self._sql.retention_due(cur, now))

    def instances_under(self, level: str, uid: str) -> list[int]:
        return self._read(lambda cur: self._sql.instances_under(cur, level, uid))

    def find(self, query: Query) -> Iterator[dict[str, Any]]:
        conn = sqlite3.connect(self.path, timeout=30)  # a generator may outlive a thread's turn
        conn.execute("PRAGMA case_sensitive_like=ON")
        try:
            cur = conn.cursor()
            yield from self._sql.find(cur, query)
        finally:
            conn.close()

    def _read(self, work):
        """Run ``work(cursor)`` on this thread's reader connection."""
        cur = self._reader().cursor()
        try:
            return work(cur)
        finally:
            cur.close()

    def matching_instances(self, query: Query) -> list[InstanceFacts]:
        return self._read(lambda cur: self._sql.matching_instances(cur, query))

    def instances(self) -> list[InstanceFacts]:
        return self._read(self._sql.instances)

    def locate(self, sop_instance_uid: str) -> InstanceLocation | None:
        return self._read(lambda cur: self._sql.locate(cur, sop_instance_uid))

    def stats(self) -> dict[str, Any]:
        conn = self._reader()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")  # one snapshot for every figure
            return self._sql.stats(cur)
        finally:
            conn.rollback()
            cur.close()

    def sizes(self, level: str, uid: str) -> dict[str, Any]:
        return self._read(lambda cur: self._sql.sizes(cur, level, uid))

    def received_per_day(self) -> list[dict[str, Any]]:
        return self._read(self._sql.received_per_day)

    def close(self) -> None:
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


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
