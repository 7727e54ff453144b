"""Group commit: many concurrent writers, one transaction per batch, nobody acked early.

Each C-STORE handler submits its work and blocks until the transaction holding it has
committed. A single writer thread drains whatever is queued into one transaction, so
concurrent associations share one commit (one WAL fsync) instead of paying one each.
A failing item is rolled back to its savepoint alone; a failing commit fails the batch.

Durability per item: work whose loss in a power failure is harmless (a queue claim: it
is released or expires, and the job is done again; processing is idempotent) is
submitted with ``durable=False``. A batch of only such items commits with the backend's
``lazy_begin`` (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit off``):
visible at once, made durable by the next durable commit (the WAL is written in order),
without a sync of its own. A batch with one durable item commits durably (PS3.4 B.2.3:
Success only after the index row is committed).
A connection that broke (the database restarted) is replaced before the next batch; while
no new one can be made, each batch fails with the connection error.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

Work = Callable[[Any], Any]  # called with a cursor inside the open transaction
T = TypeVar("T")

_STOP = object()


class GroupCommitter:
    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        begin: str | tuple[str, ...] = "BEGIN",
        lazy_begin: str | tuple[str, ...] | None = None,
        max_batch: int = 64,
        name: str = "index-writer",
        is_broken: Callable[[Any], bool] = lambda conn: False,
    ) -> None:
        self._connect = connect
        self._is_broken = is_broken
        self._begin = (begin,) if isinstance(begin, str) else begin
        lazy = lazy_begin if lazy_begin is not None else begin
        self._lazy_begin = (lazy,) if isinstance(lazy, str) else lazy
        self._max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, work: Callable[[Any], T], durable: bool = True) -> T:
        """Run ``work(cursor)`` in the next batch; return its result once committed
        (``durable``: synced to disk; otherwise only visible, see the module docstring)."""
        if not self._thread.is_alive():
            raise RuntimeError("index writer is stopped")
        future: Future[T] = Future()
        self._queue.put((work, future, durable))
        return future.result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to the constructor
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                if conn is None:
                    conn = self._reconnect(batch)
                if conn is not None:
                    self._apply(conn, batch)
                    if self._is_broken(conn):
                        log.warning("index writer: connection lost; a new one for the next batch")
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _reconnect(self, batch: list[tuple[Work, Future[Any], bool]]) -> Any:
        """A new connection, or None after failing ``batch`` with the reason."""
        try:
            conn = self._connect()
        except Exception as exc:
            for _, future, _ in batch:
                future.set_exception(exc)
            return None
        log.info("index writer: connected again")
        return conn

    def _apply(self, conn: Any, batch: list[tuple[Work, Future[Any], bool]]) -> None:
        if len(batch) == 1:
            self._apply_one(conn, *batch[0])
            return
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        durable = any(item[2] for item in batch)
        cur = conn.cursor()
        try:
            for statement in self._begin if durable else self._lazy_begin:
                cur.execute(statement)
            for n, (work, future, _) in enumerate(batch):
                cur.execute(f"SAVEPOINT item{n}")
                try:
                    results.append((future, work(cur), None))
                    cur.execute(f"RELEASE SAVEPOINT item{n}")
                except Exception as exc:
                    cur.execute(f"ROLLBACK TO SAVEPOINT item{n}")
                    cur.execute(f"RELEASE SAVEPOINT item{n}")
                    results.append((future, None, exc))
            conn.commit()
        except Exception as exc:
            log.error("index commit failed for %d item(s): %s", len(batch), exc)
            try:
                conn.rollback()
            except Exception:
                log.exception("rollback after failed commit failed")
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            cur.close()
        for future, value, error in results:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def _apply_one(self, conn: Any, work: Work, future: Future[Any], durable: bool) -> None:
        """A batch of one needs no savepoint: the item failing rolls back the transaction,
        which held only that item (two round trips fewer per write: one association
        storing alone, a compression job finishing)."""
        cur = conn.cursor()
        try:
            for statement in self._begin if durable else self._lazy_begin:
                cur.execute(statement)
            try:
                value = work(cur)
            except Exception as exc:
                self._rollback(conn)
                future.set_exception(exc)
                return
            try:
                conn.commit()
            except Exception as exc:
                log.error("index commit failed for 1 item: %s", exc)
                self._rollback(conn)
                future.set_exception(exc)
                return
        except Exception as exc:  # BEGIN itself failed (a broken connection)
            self._rollback(conn)
            future.set_exception(exc)
            return
        finally:
            cur.close()
        future.set_result(value)

    @staticmethod
    def _rollback(conn: Any) -> None:
        try:
            conn.rollback()
        except Exception:
            log.exception("rollback failed")
