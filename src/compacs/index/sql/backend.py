"""What every SQL index backend shares: the Index methods, each one statement of
:class:`compacs.index.sql.statements.SqlStatements` run in the backend's write path (a group
commit) or on a reader connection, and the bulk loader (:meth:`SqlIndex.loader`). Backends
supply ``_sql``, ``_writer``, ``_errors`` (the driver's exception base), ``_reading()`` and
``find``/``stats``/``close``, and may make a load durable at its end (``_loaded``).

Every driver error, on a read as on a write, is :class:`IndexUnavailable`: the senders
get 0xA700 (Refused: Out of Resources) while the database is away, and the node serves
again when it is back, without a restart."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from compacs.index.base import (
    AddResult,
    Duplicates,
    Forward,
    ForwardItem,
    ForwardOutcome,
    IndexUnavailable,
    InstanceFacts,
    InstanceLocation,
    Loader,
    NewInstance,
    ObjectChange,
    Selected,
    StoredInstance,
)
from compacs.index.group_commit import GroupCommitter
from compacs.index.sql.common import Cursor
from compacs.index.sql.statements import SqlStatements
from compacs.query import Query

T = TypeVar("T")


class SqlIndex:
    url: str
    _sql: SqlStatements
    _writer: GroupCommitter
    _errors: type[Exception] | tuple[type[Exception], ...] = ()
    _lazy_load = False
    """Whether a load's transactions may skip their sync: the backend's ``_loaded()`` makes
    the whole load durable at its end (SQLite: one checkpoint instead of a WAL sync per
    transaction)."""

    def _reading(self) -> AbstractContextManager[Any]:  # pragma: no cover - backends provide it
        """A connection for reads, for the duration of a ``with`` block."""
        raise NotImplementedError

    # -- identity ------------------------------------------------------------------------
    def identity(self) -> str:
        """This index's UUID, made at its first opening (the store is marked with it)."""
        known = self._read(self._sql.identity)
        if known is not None:
            return known
        made = str(uuid.uuid4())
        self._write(lambda cur: self._sql.ensure_identity(cur, made))
        stored = self._read(self._sql.identity)  # another node's, when it made one first
        if stored is None:
            raise IndexUnavailable("index identity missing after it was made")
        return stored

    # -- Index ---------------------------------------------------------------------------
    def add_instance(self, instance: NewInstance, duplicates: Duplicates) -> AddResult:
        try:
            return self._writer.submit(
                lambda cur: self._sql.add_instance(cur, instance, duplicates)
            )
        except self._errors as exc:
            raise IndexUnavailable(f"index commit failed: {exc}") from exc

    def _write(self, work: Callable[[Cursor], T], durable: bool = True) -> T:
        """Run ``work(cursor)`` in the group commit; ``durable=False`` for what may be
        lost in a power failure without harm (queue claims: see ``group_commit``)."""
        try:
            return self._writer.submit(work, durable)
        except self._errors as exc:
            raise IndexUnavailable(f"index commit failed: {exc}") from exc

    def claim_jobs(
        self, worker: str, limit: int, now: float, archive: bool = False
    ) -> list[InstanceFacts]:
        # a lost claim is a job claimed again: no sync of its own
        return self._write(
            lambda cur: self._sql.claim_jobs(cur, worker, limit, now, archive), durable=False
        )

    def queue_archive(self, stored_before: str, limit: int, now: float) -> int:
        # lost in a power failure: the next pass queues them again
        return self._write(
            lambda cur: self._sql.queue_archive(cur, stored_before, limit, now), durable=False
        )

    def claim_instance(self, sop_instance_uid: str, worker: str) -> InstanceFacts | None:
        return self._write(
            lambda cur: self._sql.claim_instance(cur, sop_instance_uid, worker), durable=False
        )

    def finish_job(
        self,
        pk: int,
        old_key: str,
        change: ObjectChange | None,
        state: str,
        note: str | None,
        tier: str | None = None,
    ) -> bool:
        """Durable when the instance switches objects (the old one is deleted next); an
        outcome without a change is lazy: lost in a power failure, the job runs again."""
        return self._write(
            lambda cur: self._sql.finish_job(cur, pk, old_key, change, state, note, tier),
            durable=change is not None,
        )

    def delete_instance(self, pk: int) -> str | None:
        return self._write(lambda cur: self._sql.delete_instance(cur, pk))

    # -- bulk loading (compacs reindex) ---------------------------------------------------
    @contextlib.contextmanager
    def loader(self) -> Iterator[Loader]:
        """A :class:`~compacs.index.base.Loader` on the group commit, for a new index no
        node uses yet; the load is durable when the block ends without an exception."""
        yield _SqlLoader(self)
        self._loaded()

    def _loaded(self) -> None:
        """Make a finished load durable (its transactions were when ``_lazy_load`` is off)."""

    def release_claims(self, node: str) -> int:
        return self._write(lambda cur: self._sql.release_claims(cur, node))

    # -- forwarding queue --------------------------------------------------------------
    def enqueue_forwards(self, instance_pks: list[int], forward: Forward) -> int:
        return self._write(lambda cur: self._sql.enqueue_forwards(cur, instance_pks, forward))

    def claim_forwards(
        self, worker: str, now: float, limit: int, skip: frozenset[str], only: str | None = None
    ) -> list[ForwardItem]:
        # a lost claim is an item sent again (forwarding is at-least-once: claims left at a
        # stop are released at the next start); no sync of its own, as for compression jobs
        return self._write(
            lambda cur: self._sql.claim_forwards(cur, worker, now, limit, skip, only),
            durable=False,
        )

    def finish_forwards(self, outcomes: Sequence[ForwardOutcome]) -> None:
        self._write(lambda cur: self._sql.finish_forwards(cur, outcomes))

    def defer_destination(self, destination: str, until: float) -> None:
        self._write(lambda cur: self._sql.defer_destination(cur, destination, until))

    def commitment_result(self, transaction_uid: str, committed: set[str], failed: set[str]) -> int:
        return self._write(
            lambda cur: self._sql.commitment_result(cur, transaction_uid, committed, failed)
        )

    def forward_items(self, state: str | None = None, limit: int = 1000) -> list[ForwardItem]:
        return self._read(lambda cur: self._sql.forward_items(cur, state, limit))

    def requeue_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int:
        return self._write(lambda cur: self._sql.requeue_forwards(cur, pks, states))

    def drop_forwards(self, pks: list[int] | None, states: tuple[str, ...]) -> int:
        return self._write(lambda cur: self._sql.drop_forwards(cur, pks, states))

    def release_forward_claims(self, stale_before: float, node: str | None = None) -> int:
        return self._write(lambda cur: self._sql.release_forward_claims(cur, stale_before, node))

    def retention_due(self, now: float) -> list[int]:
        return self._read(lambda cur: self._sql.retention_due(cur, now))

    def instances_under(self, level: str, uid: str) -> list[Selected]:
        return self._read(lambda cur: self._sql.instances_under(cur, level, uid))

    def _read(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work(cursor)`` on a reader connection."""
        try:
            with self._reading() as conn:
                cur = conn.cursor()
                try:
                    return work(cur)
                finally:
                    cur.close()
        except self._errors as exc:
            raise IndexUnavailable(f"index read failed: {exc}") from exc

    def _rows(self, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``rows`` with driver errors as IndexUnavailable (for generators: ``find``)."""
        try:
            yield from rows
        except self._errors as exc:
            raise IndexUnavailable(f"index read failed: {exc}") from exc

    def matching_instances(self, query: Query) -> list[StoredInstance]:
        return self._read(lambda cur: self._sql.matching_instances(cur, query))

    def instances(self) -> list[InstanceFacts]:
        return self._read(self._sql.instances)

    def locate(self, sop_instance_uid: str) -> InstanceLocation | None:
        return self._read(lambda cur: self._sql.locate(cur, sop_instance_uid))

    def sizes(self, level: str, uid: str) -> dict[str, Any]:
        return self._read(lambda cur: self._sql.sizes(cur, level, uid))

    def storage_groups(self) -> list[dict[str, Any]]:
        return self._read(self._sql.storage_groups)

    def received_per_day(self) -> list[dict[str, Any]]:
        return self._read(self._sql.received_per_day)


class _SqlLoader:
    """:class:`~compacs.index.base.Loader` of a :class:`SqlIndex`: each call one work item
    of the index's group commit (driver errors become IndexUnavailable there)."""

    def __init__(self, index: SqlIndex) -> None:
        self._index = index

    def adopt_identity(self, index_id: str) -> None:
        sql = self._index._sql
        self._index._write(lambda cur: sql.adopt_identity(cur, index_id))

    def add(self, items: Sequence[tuple[NewInstance, Duplicates]]) -> list[AddResult]:
        sql = self._index._sql
        return self._index._write(
            lambda cur: [sql.add_instance(cur, item, duplicates) for item, duplicates in items],
            durable=not self._index._lazy_load,
        )
