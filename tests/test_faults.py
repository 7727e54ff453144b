"""Faults an archive meets in years of service (issue 7): a kill -9 during compression,
many associations at once, and fuzzed data sets and PDUs against the store path."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from compacs.codecs.transcode import decompress
from compacs.dicom.status import Status
from compacs.index import Duplicates
from compacs.index.sqlite import SqliteIndex
from compacs.ingest import Ingest, Received
from compacs.storage import FileStore
from compacs.storage.base import OWNER_KEY
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.node import NO_COMPRESSION, echo, write_config
from tests.support.procfs import children, cpu_seconds, descendants
from tests.support.scu import association, dataset_bytes, send_datasets, status_of


def rows(data_dir: Path) -> dict[str, tuple[str, str]]:
    """sop_instance_uid -> (storage_key, sha256), read from the index file."""
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return {
            uid: (key, digest)
            for uid, key, digest in conn.execute(
                "SELECT sop_instance_uid, storage_key, sha256 FROM instances"
            )
        }


def stored_files(data_dir: Path) -> set[str]:
    store = data_dir / "store"
    return {
        p.relative_to(store).as_posix()
        for p in store.rglob("*")
        if p.is_file() and not {".tmp", ".intents"} & set(p.parts) and p.name != OWNER_KEY
    }


def assert_consistent(data_dir: Path, expected: set[str]) -> None:
    """Every expected instance is indexed, its object exists and has its SHA-256."""
    index = rows(data_dir)
    assert set(index) == expected
    for key, digest in index.values():
        path = data_dir / "store" / key
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, key


def test_kill_9_during_deferred_compression_loses_nothing(node_factory, tmp_path):
    config = write_config(
        tmp_path / "slow.toml", '[compression]\nwhen = "deferred"\ndelay = 1\nworkers = 1\n'
    )
    node = node_factory(config=config)
    series = list(ct_series(60, seed=80))  # 512 x 512: ~20 ms of compression each
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 60

    def compressed() -> int:
        with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
            query = "SELECT COUNT(*) FROM instances WHERE compression = 'compressed'"
            return conn.execute(query).fetchone()[0]

    deadline = time.monotonic() + 60
    while compressed() < 3 and time.monotonic() < deadline:  # kill it amid the backlog
        time.sleep(0.005)
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    pending_at_kill = node.stats()["pending"]
    assert pending_at_kill > 0, "the kill came too late to test anything"

    node.start()  # the work resumes
    deadline = time.monotonic() + 120
    while node.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = node.stats()
    assert stats["pending"] == 0 and stats["compression"] == {"compressed": 60}
    uids = {str(ds.SOPInstanceUID) for ds in series}
    assert_consistent(node.data_dir, uids)
    index = rows(node.data_dir)
    for ds in series:  # nothing corrupt: every stored object decodes to the pixels sent
        key, _ = index[str(ds.SOPInstanceUID)]
        stored = pydicom.dcmread(node.data_dir / "store" / key)
        assert np.array_equal(decompress(stored).pixel_array, ds.pixel_array)
    # at most the one object the worker was writing when killed is left unreferenced
    orphans = stored_files(node.data_dir) - {key for key, _ in index.values()}
    assert len(orphans) <= 1
    print(f"\nkill -9 during compression: 60 stored, {pending_at_kill} pending at the kill, "
          f"60 compressed after restart, {len(orphans)} orphan object(s)")  # fmt: skip


def test_eight_associations_of_250_instances(node_factory):
    node = node_factory()
    batches = [list(ct_series(250, 32, 32, seed=100 + n, patient_id=f"CONC{n}")) for n in range(8)]
    results: dict[int, list] = {}

    def send(n: int) -> None:
        try:
            results[n] = send_datasets(node.port, batches[n], calling=f"SCU{n}")
        except Exception as exc:  # reported by the assertion below
            results[n] = [repr(exc)]

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    seconds = time.monotonic() - start
    for n in range(8):
        assert results.get(n) == [Status.SUCCESS] * 250, (n, set(results.get(n, ["no result"])))
    deadline = time.monotonic() + 300
    while node.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.2)
    uids = {str(ds.SOPInstanceUID) for batch in batches for ds in batch}
    assert_consistent(node.data_dir, uids)
    assert stored_files(node.data_dir) == {key for key, _ in rows(node.data_dir).values()}
    print(
        f"\n8 x 250 instances on 8 associations: 2000 acknowledged in {seconds:.1f} s, "
        "2000 indexed, store and index consistent"
    )


# -- fuzzing ---------------------------------------------------------------------------

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
HOSTILE_UIDS = ["../../x", "1.2.3/../../4", "/etc/passwd", "1..2", "", "1.2." + "9" * 70]


def _seeds() -> list[tuple[bytes, str, str, str]]:
    out = []
    for ds in ct_series(3, 16, 16, seed=90):
        for ts in SYNTAXES[:2]:
            data = dataset_bytes(ds, implicit=ts == "1.2.840.10008.1.2")
            out.append((data, ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw) -> Received:
    data, ts, sop_class, sop_uid = draw(st.sampled_from(SEEDS))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "length", "delete"]))
        if not buf:
            break
        at = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[at : at + draw(st.integers(1, 32))]
        elif at + 4 <= len(buf):  # a plausible element length turned huge or odd
            buf[at : at + 4] = struct.pack("<L", draw(st.sampled_from([0xFFFFFFFF, 1, 2**31])))
    if draw(st.booleans()):
        ts = draw(st.sampled_from(SYNTAXES))
    if draw(st.integers(0, 9)) == 0:
        sop_uid = draw(st.sampled_from(HOSTILE_UIDS))
    return Received(bytes(buf), ts, sop_class, sop_uid, "FUZZER", "COMPACS")


def test_ten_thousand_mutated_data_sets_on_the_store_path(tmp_path):
    """The C-STORE path behind the network handler, in process: every mutated data set
    gets a status (no exception escapes, none hangs), and nothing is written outside
    the store."""
    data = tmp_path / "data"
    store = FileStore(data / "store")
    index = SqliteIndex(data / "index.sqlite")
    ingest = Ingest(store, index, Duplicates.KEEP_FIRST)
    statuses: dict[int, int] = {}

    @settings(
        max_examples=10_000,
        deadline=2000,  # ms per example: a hang fails the test
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated())
    def check(rx: Received) -> None:
        outcome = ingest.receive(rx)
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        assert outcome.status in {
            Status.SUCCESS,
            Status.CANNOT_UNDERSTAND,
            Status.INVALID_UID,
            Status.DATASET_MISMATCH,
        }, outcome

    try:
        check()
    finally:
        index.close()
    assert sum(statuses.values()) >= 10_000
    everything = {p for p in tmp_path.rglob("*") if p.is_file()}
    inside = {p for p in everything if (data / "store") in p.parents or p.parent == data}
    assert everything == inside
    assert list((data / "store" / ".tmp").glob("*")) == []
    # whatever was acknowledged is indexed and whole
    for key, digest in rows(data).values():
        assert hashlib.sha256((data / "store" / key).read_bytes()).hexdigest() == digest
    print(f"\nfuzzed data sets: {sum(statuses.values())}, statuses "
          + ", ".join(f"0x{s:04X}: {n}" for s, n in sorted(statuses.items())))  # fmt: skip


def _recorded_store_session(port: int) -> list[tuple[bytes, bool]]:
    """The PDUs a pynetdicom SCU sends for one C-STORE, recorded through a relay, each with
    whether the node answered it (the SCU waits for the A-ASSOCIATE-AC and the C-STORE
    response before it sends on: a reply follows the PDU that ends the stream so far)."""
    recorded: list[bytes] = []
    answered_at: set[int] = set()  # length of the SCU's stream when a reply came
    listener = socket.create_server(("127.0.0.1", 0))
    relay_port = listener.getsockname()[1]

    def relay() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", port))

        def back() -> None:
            try:
                while data := upstream.recv(65536):
                    answered_at.add(sum(map(len, recorded)))
                    client.sendall(data)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := client.recv(65536):
                recorded.append(data)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()
            listener.close()

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    (ds,) = ct_series(1, 16, 16, seed=91)
    ae = AE(ae_title="RECORDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", relay_port, ae_title="COMPACS")
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()
    thread.join(10)
    stream = b"".join(recorded)
    pdus, at = [], 0
    while at + 6 <= len(stream):
        (length,) = struct.unpack_from(">L", stream, at + 2)
        pdus.append((stream[at : at + 6 + length], at + 6 + length in answered_at))
        at += 6 + length
    return pdus


def test_mutated_pdus_do_not_hurt_the_node(plain_node):
    """Mutated A-ASSOCIATE-RQ and P-DATA-TF PDUs over TCP: the node answers or drops the
    connection, keeps serving, and writes nothing outside its store."""
    node = plain_node
    pdus = _recorded_store_session(node.port)
    assert [p[0] for p, _ in pdus][:2] == [0x01, 0x04]  # A-ASSOCIATE-RQ, then P-DATA-TF
    # the A-ASSOCIATE-AC and the C-STORE response: the PDUs the node answers
    assert [answered for _, answered in pdus[:-1]].count(True) == 2, pdus
    rng = np.random.default_rng(7)
    sessions = 400
    for n in range(sessions):
        session = [(bytearray(p), answered) for p, answered in pdus[:-1]]  # all but release
        victim, _ = session[int(rng.integers(len(session)))]
        for _ in range(int(rng.integers(1, 8))):
            victim[int(rng.integers(len(victim)))] = int(rng.integers(256))
        if n % 10 == 0:  # sometimes cut the PDU short as well
            del victim[int(rng.integers(1, len(victim))) :]
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.settimeout(0.15)
            # PDUs sent back to back: without TCP_NODELAY each waits ~40 ms (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for pdu, answered in session:
                    sock.sendall(pdu)
                    if answered:  # a PDU the node does not answer: no reply waited out
                        sock.recv(65536)
            except OSError:  # timeout, reset: the node decided to stop listening to us
                pass
    assert echo(node.port) == Status.SUCCESS
    assert "failed unexpectedly" not in node.log()  # ingest met nothing it did not expect
    store = node.data_dir / "store"
    outside = [
        p
        for p in node.data_dir.parent.rglob("*")
        if p.is_file() and store not in p.parents and p.parent != node.data_dir
        and not p.name.endswith(".log") and not p.name.endswith(".toml")
    ]  # fmt: skip
    assert outside == []
    for key, digest in rows(node.data_dir).values():  # anything stored is whole
        assert hashlib.sha256((store / key).read_bytes()).hexdigest() == digest
    print(f"\nmutated PDU sessions: {sessions}; node still serving")


def worker_processes(node_pid: int) -> list[int]:
    """The node's compression worker processes: the fork server's children."""
    return [pid for child in children(node_pid) for pid in children(child)]


def multiframe_ct(frames: int, seed: int) -> pydicom.Dataset:
    """One CT object of ``frames`` 512 x 512 frames: seconds of encode and verify."""
    slices = list(ct_series(frames, seed=seed))
    ds = slices[0]
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(s.PixelData for s in slices)
    return ds


def test_a_worker_process_killed_while_encoding_fails_one_job(node_factory, tmp_path):
    """kill -9 of the worker process mid-encode: one failed job naming it, the original
    intact, and the next instances compress in a new worker process (issue 15)."""
    require_dcmtk()
    config = write_config(tmp_path / "one.toml", "[compression]\nworkers = 1\n")
    node = node_factory(config=config)
    big = multiframe_ct(100, seed=90)  # 52 MB of pixels: ~1.3 s CPU of encode + verify
    (worker,) = worker_processes(node.proc.pid)
    idle = cpu_seconds(worker)
    assert send_datasets(node.port, [big]) == [Status.SUCCESS]
    deadline = time.monotonic() + 60
    while cpu_seconds(worker) < idle + 0.3 and time.monotonic() < deadline:
        time.sleep(0.002)  # receiving and parsing take < 0.1 s of CPU: past it, it encodes
    os.kill(worker, signal.SIGKILL)

    stats = wait_for(lambda: node.stats(), lambda s: s["pending"] == 0)
    assert stats["compression"] == {"failed": 1}, stats
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        key, syntax, state, note = conn.execute(
            "SELECT storage_key, transfer_syntax_stored, compression, compression_note "
            "FROM instances"
        ).fetchone()
    assert state == "failed" and note.startswith(f"worker process died: pid {worker} "), note
    assert syntax == "1.2.840.10008.1.2.1"
    stored = pydicom.dcmread(node.data_dir / "store" / key)  # the original, as sent
    assert np.array_equal(stored.pixel_array, big.pixel_array)
    assert stored.PixelData == big.PixelData

    series = list(ct_series(4, seed=91))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 4
    stats = wait_for(lambda: node.stats(), lambda s: s["pending"] == 0)
    assert stats["compression"] == {"failed": 1, "compressed": 4}, stats
    (replacement,) = worker_processes(node.proc.pid)
    assert replacement != worker
    keys = rows(node.data_dir)
    for ds in series:  # DCMTK decodes what the new worker process encoded
        path = node.data_dir / "store" / keys[str(ds.SOPInstanceUID)][0]
        out = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        done = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(pydicom.dcmread(out).pixel_array, ds.pixel_array)
    assert "worker process died" in node.log()


def wait_for(read, done, timeout: float = 120):
    """``read()`` until ``done`` says so (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_worker_processes_end_with_a_killed_node(node_factory):
    """After kill -9 of the node its worker processes and their fork server end too,
    instead of waiting forever for a job from a node that is gone."""
    node = node_factory()
    below = descendants(node.proc.pid)
    assert len(worker_processes(node.proc.pid)) == 2, below
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while (left := [pid for pid in below if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # leave no stray process behind, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert left == []


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    "step",
    [
        "compressed-placed",  # the encoding renamed into place, the index not yet switched
        "compressed-switched",  # the index switched, the original not yet deleted
    ],
)
def test_kill_9_at_the_object_switch_loses_nothing_and_leaves_no_orphan(
    node_factory, tmp_path, monkeypatch, step
):
    """Issue 15: the node killed (-9) at each step of switching an instance to its
    compressed copy (the copy written by a worker process and renamed into place; the
    original's deletion without a directory fsync). Every acknowledged instance reads
    back (DCMTK's dcmdjpls, then pydicom) equal to what was sent, and start-up recovery
    leaves no unreferenced object."""
    require_dcmtk()
    config = write_config(
        tmp_path / "crash.toml", '[compression]\nwhen = "deferred"\ndelay = 2\nworkers = 1\n'
    )
    monkeypatch.setenv("COMPACS_CRASH_AT", step)  # the node's failpoint (jobs/compress.py)
    node = node_factory(config=config)
    series = list(ct_series(6, seed=150))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 6  # all acknowledged
    assert node.proc is not None
    assert node.proc.wait(60) == -signal.SIGKILL  # died at the step, at the first job
    index = rows(node.data_dir)
    left = stored_files(node.data_dir) - {key for key, _ in index.values()}
    assert len(left) == 1, f"the kill at {step} should leave one unreferenced object: {left}"

    monkeypatch.delenv("COMPACS_CRASH_AT")
    node.start()
    deadline = time.monotonic() + 120
    while node.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.stats()["compression"] == {"compressed": 6}
    uids = {str(ds.SOPInstanceUID) for ds in series}
    assert_consistent(node.data_dir, uids)
    index = rows(node.data_dir)
    assert stored_files(node.data_dir) == {key for key, _ in index.values()}  # no orphan
    for n, ds in enumerate(series):
        key, _ = index[str(ds.SOPInstanceUID)]
        plain = tmp_path / f"plain{n}.dcm"
        subprocess.run(
            ["dcmdjpls", str(node.data_dir / "store" / key), str(plain)],
            check=True,
            capture_output=True,
        )
        back = pydicom.dcmread(plain)
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        for elem in ds:
            if elem.tag != 0x7FE00010:
                assert back[elem.tag].value == elem.value, elem.keyword


@pytest.mark.parametrize(
    "step",
    [
        "received-staged:3",  # the 3rd object written and fsynced in .tmp, under no key yet
        "received-placed:3",  # the 3rd object renamed into place, its index row not committed
    ],
)
def test_kill_9_while_receiving_loses_nothing_acknowledged_and_leaves_no_orphan(
    node_factory, tmp_path, monkeypatch, step
):
    """Issue 15: the received object is written on a helper thread while the receiving
    thread parses and hashes it, then renamed under its key before the index commit. The
    node killed (-9) at either step: the two instances acknowledged before read back with
    pydicom equal to what was sent, the one being stored was never acknowledged and is
    gone, and start-up recovery leaves no unreferenced object and no note behind."""
    monkeypatch.setenv("COMPACS_CRASH_AT", step)  # compacs.failpoints
    node = node_factory(config=write_config(tmp_path / "plain.toml", NO_COMPRESSION))
    series = list(ct_series(5, seed=151))
    statuses: list[int | None] = []
    contexts = [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in series]
    with association(node.port, contexts[:1], timeout=5) as assoc:  # one context
        for ds in series:  # until the node dies
            statuses.append(status_of(assoc.send_c_store(ds)) if assoc.is_established else None)
    assert statuses[:2] == [Status.SUCCESS] * 2 and Status.SUCCESS not in statuses[2:]
    assert node.proc is not None and node.proc.wait(60) == -signal.SIGKILL
    store = node.data_dir / "store"
    objects = [p for p in store.rglob("*") if p.suffix in (".dcm", ".part")]
    assert len(objects) == 3, objects  # the acknowledged two and the third, staged or placed

    monkeypatch.delenv("COMPACS_CRASH_AT")
    node.start()
    acknowledged = {str(ds.SOPInstanceUID): ds for ds in series[:2]}
    assert_consistent(node.data_dir, set(acknowledged))
    index = rows(node.data_dir)
    assert stored_files(node.data_dir) == {key for key, _ in index.values()}  # no orphan
    assert not list((store / ".tmp").iterdir()) and not list((store / ".intents").iterdir())
    for uid, ds in acknowledged.items():
        back = pydicom.dcmread(store / index[uid][0])
        for elem in ds:
            assert back[elem.tag].value == elem.value, elem.keyword
