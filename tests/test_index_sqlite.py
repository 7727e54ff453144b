"""The SQLite index (index/sqlite.py) and its group commit (index/group_commit.py):
levels, duplicates, stats, schema versions, failing and concurrent writers, durability."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from compacs.dicom.attributes import extract
from compacs.index import Duplicates, IndexUnavailable, NewInstance
from compacs.index.group_commit import GroupCommitter
from compacs.index.sqlite import SqliteIndex
from compacs.synthetic import ct_series

EXPLICIT = "1.2.840.10008.1.2.1"


def _instance(ds, key: str = "k/1.dcm", size: int = 100) -> NewInstance:
    return NewInstance(
        attributes=extract(ds),
        storage_key=key,
        transfer_syntax=EXPLICIT,
        bytes_received=size,
        bytes_stored=size,
        sha256="0" * 64,
        calling_ae="A",
        called_ae="COMPACS",
        received_at="2026-01-01T00:00:00+00:00",
    )


def test_index_levels_duplicates_and_stats(tmp_path):
    index = SqliteIndex(tmp_path / "i.sqlite")
    try:
        a, b = list(ct_series(2, 8, 8, seed=1))
        assert index.add_instance(_instance(a, "k/a.dcm"), Duplicates.KEEP_FIRST).added
        assert index.add_instance(_instance(b, "k/b.dcm"), Duplicates.KEEP_FIRST).added
        again = index.add_instance(_instance(a, "k/a2.dcm"), Duplicates.KEEP_FIRST)
        assert not again.added and again.obsolete_key == "k/a2.dcm"
        replaced = index.add_instance(_instance(a, "k/a3.dcm"), Duplicates.REPLACE)
        assert replaced.added and replaced.obsolete_key == "k/a.dcm"
        assert index.locate(str(a.SOPInstanceUID)).storage_key == "k/a3.dcm"
        stats = index.stats()
        assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
            1,
            1,
            1,
            2,
        )
        assert stats["bytes_received"] == 200 and stats["by_modality"]["CT"]["instances"] == 2
    finally:
        index.close()


def test_replacing_into_another_series_prunes_the_empty_one(tmp_path):
    index = SqliteIndex(tmp_path / "i.sqlite")
    try:
        (a,) = ct_series(1, 8, 8, seed=1, patient_id="P1")
        (b,) = ct_series(1, 8, 8, seed=2, patient_id="P2")
        index.add_instance(_instance(a), Duplicates.REPLACE)
        b.SOPInstanceUID = a.SOPInstanceUID  # same instance, now filed under another patient
        index.add_instance(_instance(b, "k/2.dcm"), Duplicates.REPLACE)
        stats = index.stats()
        assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
            1,
            1,
            1,
            1,
        )
    finally:
        index.close()


def test_index_schema_is_versioned_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "i.sqlite"
    SqliteIndex(path).close()
    SqliteIndex(path).close()  # reopening migrates nothing
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(RuntimeError, match="newer than this compacs"):
        SqliteIndex(path)


def _committer_connection(path, statements: list[str] | None = None):
    """A connect() for a GroupCommitter on a SQLite table ``t``; the first word of each
    statement its cursors run is appended to ``statements`` when given."""

    def connect():
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER UNIQUE)")

        class Cursor:
            def __init__(self):
                self.cur = conn.cursor()

            def execute(self, sql, params=()):
                if statements is not None:
                    statements.append(sql.split()[0])
                return self.cur.execute(sql, params)

            def close(self):
                self.cur.close()

        class C:
            close = conn.close
            cursor = Cursor

            def commit(self):
                conn.execute("COMMIT")

            def rollback(self):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

        return C()

    return connect


def test_group_commit_isolates_a_failing_item_and_batches_concurrent_ones(tmp_path):
    committer = GroupCommitter(_committer_connection(tmp_path / "g.sqlite"))
    errors, done = [], []

    def add(v: int) -> None:
        try:
            committer.submit(lambda cur: cur.execute("INSERT INTO t VALUES (?)", (v,)))
            done.append(v)
        except sqlite3.IntegrityError:
            errors.append(v)

    threads = [threading.Thread(target=add, args=(v % 40,)) for v in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committer.close()
    assert len(done) == 40 and len(errors) == 10
    with sqlite3.connect(tmp_path / "g.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 40


def test_group_commit_of_one_item_takes_no_savepoint_and_rolls_back_alone(tmp_path):
    """One writer alone (one association storing): BEGIN, the item, COMMIT; a failing item
    leaves nothing behind and the next one commits."""
    statements: list[str] = []
    committer = GroupCommitter(_committer_connection(tmp_path / "one.sqlite", statements))

    def insert_twice(cur):
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("INSERT INTO t VALUES (1)")  # fails: the first insert must go too

    with pytest.raises(sqlite3.IntegrityError):
        committer.submit(insert_twice)
    committer.submit(lambda cur: cur.execute("INSERT INTO t VALUES (2)"))
    committer.close()
    assert "SAVEPOINT" not in statements and statements.count("BEGIN") == 2
    with sqlite3.connect(tmp_path / "one.sqlite") as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_index_commit_failure_is_reported_as_unavailable(tmp_path):
    index = SqliteIndex(tmp_path / "i.sqlite")
    try:
        with sqlite3.connect(tmp_path / "i.sqlite") as conn:  # sabotage: drop a table
            conn.execute("DROP TABLE instances")
        (a,) = ct_series(1, 8, 8)
        with pytest.raises(IndexUnavailable):
            index.add_instance(_instance(a), Duplicates.KEEP_FIRST)
    finally:
        index.close()


def test_group_commit_syncs_a_batch_unless_all_of_it_may_be_lost(tmp_path):
    """Issue 15: queue claims commit without a WAL sync of their own (SQLite's
    synchronous=NORMAL); a batch holding one durable item (an index row a C-STORE
    Success waits for, an object switch) commits with synchronous=FULL, whatever else
    shares it. SQLite itself reports the level in force inside each transaction."""
    index = SqliteIndex(tmp_path / "i.sqlite")

    def level(cur) -> int:
        return cur.execute("PRAGMA synchronous").fetchone()[0]  # 1 NORMAL, 2 FULL

    try:
        writer = index._writer
        assert writer.submit(level, durable=False) == 1
        assert writer.submit(level) == 2
        gate, held = threading.Event(), threading.Event()

        def hold(cur) -> None:  # keeps the writer busy while the next batch queues up
            held.set()
            gate.wait(10)

        blocker = threading.Thread(target=writer.submit, args=(hold,))
        blocker.start()
        held.wait(10)
        results: dict[str, int] = {}
        lazy = threading.Thread(target=lambda: results.update(lazy=writer.submit(level, False)))
        durable = threading.Thread(target=lambda: results.update(durable=writer.submit(level)))
        for n, t in enumerate((lazy, durable), start=1):
            t.start()
            for _ in range(1000):  # until it is queued behind the blocker
                if writer._queue.qsize() >= n:
                    break
                threading.Event().wait(0.01)
        gate.set()
        for t in (blocker, lazy, durable):
            t.join(10)
        assert results == {"lazy": 2, "durable": 2}  # one batch: synced
        assert writer.submit(level, durable=False) == 1  # and the connection lazy again
    finally:
        index.close()
