"""PostgreSQL index backend: one database shared by several compacs nodes.

The same schema, migrations and statements as SQLite (:mod:`compacs.index.sql`), with
PostgreSQL's placeholders and aggregate, and ``FOR UPDATE SKIP LOCKED`` on queue claims
so that workers of every node share the compression and forwarding queues without
taking an item twice. Writes of one node go through a group commit, as on SQLite; a
commit is durable (``synchronous_commit`` on, the server's default) before a C-STORE
is answered. Migrations take an advisory lock: nodes starting together migrate once.

URL: ``postgresql://user[:password]@host[:port]/database`` (libpq's, so ``?host=/socket``
and the ``PG*`` environment variables work too).

Connections: reads take one from a bounded pool (``psycopg_pool``; each checked before
use, so a database restart costs one failed check, not a dead node) and give it back;
the writer reconnects after its connection broke. pynetdicom runs every association in a
thread of its own: a connection kept per thread leaked one per association, and from
about the 98th association (PostgreSQL's default ``max_connections`` 100) every C-STORE
failed until the node was restarted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

from compacs.index.base import IndexUnavailable
from compacs.index.group_commit import GroupCommitter
from compacs.index.schema import POSTGRESQL, SCHEMA_VERSION, migrations
from compacs.index.sql import SqlIndex, SqlStatements
from compacs.query import Query

try:
    import psycopg
    import psycopg_pool
except ImportError:  # pragma: no cover - an optional extra
    psycopg = psycopg_pool = None  # type: ignore[assignment]  # the extra absent: no backend

MIGRATION_LOCK = 0x636F6D70  # "comp": pg_advisory_xact_lock key for schema migrations
READERS = 8
"""Reader connections of one node at most (C-FIND, C-MOVE lookups, stats, the web)."""
CONNECT_TIMEOUT = 10


class PostgresIndex(SqlIndex):
    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise ValueError(
                f"index URL {url!r}: PostgreSQL needs psycopg: pip install 'compacs[scale]'"
            )
        self.url = url
        self._errors = (psycopg.Error, psycopg_pool.PoolTimeout)
        self._sql = SqlStatements(
            "%s", list_agg="string_agg(DISTINCT {}, ',')", skip_locked=" FOR UPDATE SKIP LOCKED"
        )
        self._migrate()
        self._pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=READERS,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=CONNECT_TIMEOUT,
            name="compacs-readers",
            open=True,
        )
        self._writer = GroupCommitter(
            self._connect,
            begin="BEGIN",
            # queue claims only: no WAL flush wait of their own (group_commit docstring)
            lazy_begin=("BEGIN", "SET LOCAL synchronous_commit TO OFF"),
            is_broken=lambda conn: conn.broken,
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresIndex:
        return cls(url)

    def _open(self) -> Any:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise ValueError(f"index {self._safe_url()}: cannot connect: {exc}") from None

    def _safe_url(self) -> str:
        """The URL without its password, for messages."""
        head, sep, tail = self.url.partition("@")
        if sep and ":" in head.split("//", 1)[-1]:
            scheme, _, user = head.partition("//")
            return f"{scheme}//{user.split(':')[0]}:***@{tail}"
        return self.url

    def _connect(self) -> Any:
        # autocommit: the GroupCommitter issues BEGIN/COMMIT itself; a failure is the
        # driver's error, which the index turns into IndexUnavailable (0xA700)
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        return _ExplicitTransactions(conn)

    def _reading(self) -> contextlib.AbstractContextManager[Any]:
        return self._pool.connection()

    def _migrate(self) -> None:
        with self._open() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self._safe_url()}: index schema version {current} is newer than "
                    f"this compacs ({SCHEMA_VERSION}); upgrade compacs"
                )
            for version, statements in sorted(migrations(POSTGRESQL).items()):
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def find(self, query: Query) -> Generator[dict[str, Any], None, None]:
        """Rows for C-FIND, on a pooled connection held until the generator ends."""
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                yield from self._sql.find(cur, query)
        except self._errors as exc:
            raise IndexUnavailable(f"index read failed: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        def snapshot(cur: Any) -> dict[str, Any]:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                return self._sql.stats(cur)  # one snapshot for every figure
            finally:
                cur.execute("ROLLBACK")

        return self._read(snapshot)

    def close(self) -> None:
        self._writer.close()
        self._pool.close()


class _ExplicitTransactions:
    """An autocommit psycopg connection whose commit/rollback issue SQL (the group
    committer opens the transaction with BEGIN itself)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self) -> Any:
        return self._conn.cursor()

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")

    @property
    def broken(self) -> bool:
        """The server went away (restart, network): a new connection is needed."""
        return bool(self._conn.closed or self._conn.broken)

    def close(self) -> None:
        self._conn.close()
