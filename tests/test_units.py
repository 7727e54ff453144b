"""Plain-function tests: UIDs, structure checks, storage keys, stores, index, config."""

from __future__ import annotations

import errno
import socket
import sqlite3
import struct
import threading
import tomllib
import types

import numpy as np
import pytest
from pydicom import dcmread
from pynetdicom.transport import AssociationSocket

from compacs.config import ConfigError, from_document, with_overrides
from compacs.dicom.ae import InvalidPeer, Peer
from compacs.dicom.attributes import extract
from compacs.dicom.part10 import structure_problem
from compacs.dicom.sop_classes import storage_sop_classes
from compacs.dicom.syntaxes import BY_UID, accepted_for_storage
from compacs.dicom.uids import InvalidUID, is_valid_uid, require_uid
from compacs.index import Duplicates, IndexUnavailable, NewInstance
from compacs.index.group_commit import GroupCommitter
from compacs.index.sqlite import SqliteIndex
from compacs.net.guard import recv_whole
from compacs.storage import FileStore, StorageFull, storage_key, validate_key
from compacs.storage.filesystem import IntentLog, unsettled
from compacs.synthetic import ct_series
from tests.conftest import ROOT
from tests.dicomfiles import by_name, storage_files
from tests.scu import dataset_bytes

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.2.3." + "4" * 58, "1.2.0123"])
def test_valid_uids(uid):
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1.2.", ".1.2", "1..2", "1.2.a", "../1", "1/2", "1.2\x00", "1" * 65, None, 12]
)
def test_invalid_uids(uid):
    assert not is_valid_uid(uid)


def test_require_uid_names_the_attribute():
    with pytest.raises(InvalidUID, match=r"SeriesInstanceUID .* \(PS3.5 9.1"):
        require_uid("1.2.x", "SeriesInstanceUID")
    with pytest.raises(InvalidUID, match="StudyInstanceUID is missing"):
        require_uid(None, "StudyInstanceUID")


def test_storage_keys_are_safe_and_content_addressed():
    key = storage_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "ab" * 32)
    assert validate_key(key) == key
    assert key.endswith("/1.2.3/1.2.3.4/1.2.3.4.5.abababababababab.dcm")
    assert key != storage_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "cd" * 32)
    for bad in ("../x", "a/../b", "/abs", "a//b", ".hidden", "a/b\\c", "a/b\x00"):
        with pytest.raises(ValueError):
            validate_key(bad)


def _body(path) -> tuple[bytes, int, str]:
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 140)
    return (
        raw,
        144 + group_length,
        str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID),
    )


def test_structure_check_accepts_every_intact_public_file():
    damaged = {
        "MR_truncated.dcm",
        "rtplan_truncated.dcm",
        "emri_small_jpeg_2k_lossless_too_short.dcm",
        "SC_rgb_jpeg.dcm",  # Implicit VR data set in a file labelled Explicit VR
    }
    problems = {}
    for f in storage_files():
        raw, start, ts = _body(f.path)
        if (problem := structure_problem(raw, start, ts)) is not None:
            problems[f.name] = problem
    assert set(problems) == damaged, problems


def test_structure_check_finds_truncation_anywhere():
    ds = next(ct_series(1, 32, 32))
    body = dataset_bytes(ds)
    assert structure_problem(body, 0, EXPLICIT) is None
    for cut in (7, 100, len(body) // 2, len(body) - 1):
        assert structure_problem(body[:cut], 0, EXPLICIT) is not None, cut
    assert "Explicit VR" in structure_problem(dataset_bytes(ds, implicit=True), 0, EXPLICIT)


def test_structure_check_walks_sequences_and_fragments():
    raw, start, ts = _body(by_name("MR_small_RLE.dcm"))  # encapsulated
    assert structure_problem(raw, start, ts) is None
    no_delimiter = raw[: raw.rfind(b"\xfe\xff\xdd\xe0")]
    assert "Sequence Delimitation" in structure_problem(no_delimiter, start, ts)
    raw, start, ts = _body(by_name("rtplan.dcm"))  # nested undefined-length sequences
    assert structure_problem(raw, start, ts) is None
    raw, start, ts = _body(by_name("image_dfl.dcm"))  # deflated
    assert structure_problem(raw, start, ts) is None
    assert "inflated" in structure_problem(raw[:start] + b"\xff" * 50, start, ts)


def test_every_stored_syntax_is_in_the_table_and_accepted():
    for uid in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.1.99"):
        assert uid in accepted_for_storage()
    assert (
        not BY_UID["1.2.840.10008.1.2.4.91"].lossless and BY_UID["1.2.840.10008.1.2.4.90"].lossless
    )
    classes = storage_sop_classes()
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT
    assert "1.2.840.10008.5.1.4.1.1.6" in classes  # retired US Image Storage


def test_extract_indexes_every_level():
    ds = next(ct_series(1, 16, 16, patient_id="PX1"))
    attrs = extract(ds)
    assert attrs["PATIENT"]["patient_id"] == "PX1"
    assert attrs["PATIENT"]["patient_name"] == "Synthetic^Phantom"
    assert attrs["STUDY"]["study_uid"] == ds.StudyInstanceUID
    assert attrs["SERIES"]["modality"] == "CT"
    assert attrs["IMAGE"]["bits_stored"] == 12 and attrs["IMAGE"]["rows"] == 16


# -- filesystem store ----------------------------------------------------------------


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


# -- index -----------------------------------------------------------------------------


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


# -- config ----------------------------------------------------------------------------


def test_config_defaults_and_overrides():
    settings = from_document({"node": {"port": 4242}, "ingest": {"duplicates": "replace"}})
    assert settings.port == 4242 and settings.duplicates is Duplicates.REPLACE
    settings = with_overrides(settings, port=5000, peers=[Peer.parse("X@h:1")])
    assert settings.port == 5000 and [str(p) for p in settings.peers] == ["X@h:1"]
    assert Peer.parse("PACS@[::1]:104").host == "::1"
    with pytest.raises(InvalidPeer, match="AE title"):
        Peer.parse("WAY-TOO-LONG-AE-TITLE@h:1")
    with pytest.raises(ConfigError, match="expected"):
        from_document({"network": {"max_pdu": True}})


def test_context_batches_keep_each_sop_class_whole():
    from pynetdicom import build_context

    from compacs.net.sender import batches

    contexts = []
    for n in range(70):
        uid = f"1.2.3.{n}"
        contexts += [
            build_context(uid, ["1.2.840.10008.1.2.4.80"]),
            build_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        ]
    groups = batches(contexts)
    assert [len(g) for g in groups] == [128, 12]
    for group in groups:
        classes = [str(cx.abstract_syntax) for cx in group]
        assert all(classes.count(c) == 2 for c in classes)


def test_the_example_config_loads_and_documents_every_setting():
    """config/compacs.toml holds every setting with its default (and stays valid TOML)."""
    import tomllib
    from dataclasses import fields

    from compacs.config import _POLICY_KEYS, _ROUTING_KEYS, SCHEMA, Settings, load
    from compacs.routing import Routing

    path = ROOT / "config" / "compacs.toml"
    settings = load(path)
    defaults = Settings()
    for f in fields(Settings):
        if f.name not in ("data_dir", "policy", "routing"):
            assert getattr(settings, f.name) == getattr(defaults, f.name), f.name
    assert settings.routing == Routing() and settings.policy == defaults.policy
    doc = tomllib.loads(path.read_text())
    text = path.read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert key in doc.get(section, {}) or f"# {key} =" in text, f"[{section}] {key}"
    assert set(_POLICY_KEYS) <= set(doc["compression"])
    assert set(_ROUTING_KEYS) <= set(doc["forwarding"])


@pytest.mark.parametrize(
    "rule, message",
    [
        ('to = "PACS"', "destination 'PACS' is not a peer"),
        ('to = "X@h:104"\nsyntax = ["jpeg-ls"]', "unknown key 'syntax'"),
        ('to = "X@h:104"\nsyntaxes = ["jpeg-ls-near"]', "lossy = true"),
        ('to = "X@h:104"\nlossy = true\ncommit = true', "not supported"),
        ('to = "X@h:104"\nafter = "later"', "after must be"),
        ('to = "X@h:104"\nretain_days = -1', "retain_days"),
        ('to = "X@h:104"\nmodality = 3', "modality must be a str"),
        ("", "to must name"),
    ],
)
def test_routing_rule_errors_name_the_rule_and_key(rule, message):
    doc = tomllib.loads(f"[[forwarding.rules]]\n{rule}\n")
    with pytest.raises(ConfigError) as exc:
        from_document(doc, "gw.toml")
    assert "gw.toml: [[forwarding.rules]] #1" in str(exc.value)
    assert message in str(exc.value)


def test_routing_rules_all_apply_and_a_destination_is_queued_once():
    doc = tomllib.loads(
        '[[peers]]\nae_title = "PACS"\nhost = "10.0.0.1"\nport = 104\n'
        '[[forwarding.rules]]\nmodality = "CT"\nto = ["PACS", "TELE@10.0.0.2:104"]\n'
        'syntaxes = ["jpeg-ls", "uncompressed"]\n'
        '[[forwarding.rules]]\nStudyDescription = "CHEST"\nto = "PACS"\nsyntaxes = ["stored"]\n'
        '[[forwarding.rules]]\nmodality = "MR"\nto = "MRONLY@10.0.0.3:104"\n'
    )
    routing = from_document(doc).routing
    facts = {"modality": "CT", "study_description": "CHEST"}
    forwards = routing.forwards_for(facts)
    assert [f.destination for f in forwards] == ["PACS@10.0.0.1:104", "TELE@10.0.0.2:104"]
    assert forwards[0].syntaxes == (
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
    )
    assert routing.forwards_for({"modality": "US"}) == ()
    assert routing.retry_at(100.0, 1) == 105.0 and routing.retry_at(0.0, 30) == 900.0


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"])
def test_a_decompressed_ybr_jpeg_keeps_pixels_and_photometric_together(name):
    """A JPEG baseline YBR_FULL(_422) image made native (C-MOVE to an uncompressed-only
    peer, forwarding): its pixels are what its Photometric Interpretation says."""
    from pydicom.data import get_testdata_file

    from compacs.codecs.transcode import decompress

    path = get_testdata_file(name)
    expected = dcmread(path).pixel_array  # pydicom: RGB
    native = decompress(dcmread(path))
    assert not native.file_meta.TransferSyntaxUID.is_compressed
    error = np.abs(native.pixel_array.astype(int) - expected.astype(int)).max()
    assert error <= 2  # chroma upsampling differs by a rounding step between decoders


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


def test_recv_whole_reads_what_pynetdicom_reads():
    """guard.recv_whole: all ``n`` bytes across partial sends, fewer when the peer closes,
    a timeout raised (as pynetdicom's AssociationSocket.recv: dul.py turns both into
    Evt17); the bytes are pynetdicom's own read of the same stream."""
    payload = bytes(range(256)) * 3000  # 768,000 bytes

    def read_with(reader) -> bytes:
        ours, theirs = socket.socketpair()
        ours.settimeout(5)

        def send() -> None:
            for start in range(0, len(payload), 70_001):
                theirs.sendall(payload[start : start + 70_001])
            theirs.close()

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return bytes(reader(ours, len(payload) + 10))
        finally:
            sender.join()
            ours.close()

    ours = read_with(lambda s, n: recv_whole(types.SimpleNamespace(socket=s), n))
    theirs = read_with(lambda s, n: AssociationSocket.recv(types.SimpleNamespace(socket=s), n))
    assert ours == theirs == payload  # short by the 10 bytes never sent: the peer closed

    quiet, peer = socket.socketpair()
    quiet.settimeout(0.2)
    peer.sendall(b"\x04\x00")
    with pytest.raises(TimeoutError):
        recv_whole(types.SimpleNamespace(socket=quiet), 6)
    quiet.close()
    peer.close()


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
