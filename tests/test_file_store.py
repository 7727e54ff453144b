"""The filesystem store (storage/filesystem.py): atomic puts, a full disk, shared directory
fsyncs, and the intent log start-up settles."""

from __future__ import annotations

import errno
import threading

import pytest

from compacs.storage import FileStore, StorageFull
from compacs.storage.filesystem import IntentLog, unsettled


def test_file_store_put_is_atomic_and_recovers_leftovers(tmp_path):
    store = FileStore(tmp_path / "s")
    store.put("ab/1.2/3.dcm", b"hello")
    assert store.get("ab/1.2/3.dcm") == b"hello" and store.size("ab/1.2/3.dcm") == 5
    assert list(store.keys()) == ["ab/1.2/3.dcm"]
    (tmp_path / "s" / ".tmp" / "crash.part").write_bytes(b"half")
    assert store.recover() == 1
    assert list((tmp_path / "s" / ".tmp").iterdir()) == []
    store.delete("ab/1.2/3.dcm")
    store.delete("ab/1.2/3.dcm")  # idempotent
    assert not store.exists("ab/1.2/3.dcm")
    with pytest.raises(ValueError):
        store.put("../escape.dcm", b"x")


def test_file_store_reports_a_full_disk(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "s")
    import compacs.storage.filesystem as fs

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs.os, "write", full)
    with pytest.raises(StorageFull):
        store.put("x/1.dcm", b"data")
    assert list((tmp_path / "s" / ".tmp").iterdir()) == []
    assert not store.exists("x/1.dcm")


def test_overlapping_renames_into_a_directory_share_its_fsync(tmp_path, monkeypatch):
    """Issue 15: FileStore puts whose renames overlap in one directory share a directory
    fsync, and none returns before an fsync that began after its own rename ended."""
    from pathlib import Path

    import compacs.storage.filesystem as fs

    clock = iter(range(10**6))
    lock = threading.Lock()
    syncs: list[tuple[int, int]] = []  # (began, ended) ticks
    renamed: dict[str, int] = {}
    returned: dict[str, int] = {}
    real_replace = fs.os.replace

    def tick() -> int:
        with lock:
            return next(clock)

    def slow_fsync(directory: Path) -> None:
        began = tick()
        threading.Event().wait(0.05)  # a slow disk: the others pile up meanwhile
        syncs.append((began, tick()))

    def replace(src, dst) -> None:
        real_replace(src, dst)
        renamed[Path(dst).name] = tick()

    store = FileStore(tmp_path / "s")
    monkeypatch.setattr(fs, "_fsync_dir", slow_fsync)
    monkeypatch.setattr(fs.os, "replace", replace)

    def put(n: int) -> None:
        store.put(f"ab/1.2/{n}.dcm", b"x")
        returned[f"{n}.dcm"] = tick()

    threads = [threading.Thread(target=put, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(returned) == 12
    for name, done in returned.items():  # covered: an fsync began after it and ended before
        assert any(renamed[name] < began and ended < done for began, ended in syncs), name
    assert len(syncs) < 12  # shared (the first directories made once count among them)


def test_intent_log_rotates_and_leaves_only_unended_steps(tmp_path, monkeypatch):
    """storage/filesystem.py intents: lines in a log of the process's own; a log past
    ROTATE_AT is followed by a new one and removed when its last step ends; what a crash
    leaves (steps begun, never ended) is what start-up settles, and the live log is
    never offered for settling."""
    monkeypatch.setattr(IntentLog, "ROTATE_AT", 200)
    store = FileStore(tmp_path / "store")
    intents = tmp_path / "store" / ".intents"
    crashed = intents / "left-by-a-crash.log"
    crashed.write_text("+aa/1/2.dcm\n+aa/1/3.dcm\n-aa/1/2.dcm\n+aa/1/4.dcm\n", "ascii")
    older = intents / "older.keys"  # one note a file, a key a line (before the logs)
    older.write_text("bb/5/6.dcm\nbb/5/7.dcm", "ascii")
    with store.intent(["cc/8/long-running.dcm"]):
        for n in range(10):  # ~30 bytes a line: rotates every few steps
            with store.intent([f"dd/9/{n}.dcm"]):
                pass
        logs = set(intents.iterdir()) - {crashed, older}
        assert len(logs) == 2  # the first log holds an open step, the newest is current
        assert store.intents() == [
            (crashed, ["aa/1/3.dcm", "aa/1/4.dcm"]),
            (older, ["bb/5/6.dcm", "bb/5/7.dcm"]),
        ]
    logs = set(intents.iterdir()) - {crashed, older}
    assert len(logs) == 1  # the first log went with its last step
    (current,) = logs
    assert unsettled(current.read_text("ascii")) == []
