"""Bad input gets a clear answer, the server keeps serving, and nothing is lost.

Each case talks to a real node over TCP. After each one the node must still answer
C-ECHO and store a good image, and the store and index must hold nothing of the bad one.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from compacs.dicom.status import Status
from compacs.storage.base import OWNER_KEY
from compacs.synthetic import ct_series
from tests.support.node import NO_COMPRESSION, echo, free_port, write_config
from tests.support.scu import association, dataset_bytes, send_datasets, send_raw, status_of


def good_slice(seed: int = 1, size: int = 64):
    return next(ct_series(1, size, size, seed=seed))


def store_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "store").rglob("*") if p.is_file() and p.name != OWNER_KEY]


def indexed(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]


def assert_still_serving(node, seed: int = 999) -> None:
    assert echo(node.port) == Status.SUCCESS
    assert send_datasets(node.port, [good_slice(seed)]) == [Status.SUCCESS]


def send_bad(node, ds, *, sop_instance=None, sop_class=CTImageStorage, body=None):
    response = send_raw(
        node.port,
        sop_class,
        sop_instance or str(ds.SOPInstanceUID),
        ExplicitVRLittleEndian,
        body if body is not None else dataset_bytes(ds),
    )
    return status_of(response), response.get("ErrorComment", "")


def test_unparseable_data_set_is_refused(node):
    ds = good_slice()
    for body in (
        bytes(range(256)) * 16,  # noise
        b"This is not a DICOM data set, only text. " * 30,
        dataset_bytes(ds)[:-1000],  # truncated inside Pixel Data
        b"\x08\x00\x16\x00UI\x40\x00" + b"1.2",  # value shorter than its length
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff",
    ):
        status, comment = send_bad(node, ds, body=body)
        assert status == Status.CANNOT_UNDERSTAND, comment
        assert "malformed" in comment or "parsed" in comment
    assert store_files(node.data_dir) == []
    assert indexed(node.data_dir) == 0
    assert_still_serving(node)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_refused(node, keyword):
    ds = good_slice()
    uid = str(ds.SOPInstanceUID)
    delattr(ds, keyword)
    status, comment = send_bad(node, ds, sop_instance=uid)
    assert status == Status.INVALID_UID
    assert keyword in comment and "missing" in comment
    assert store_files(node.data_dir) == [] and indexed(node.data_dir) == 0
    assert_still_serving(node)


@pytest.mark.parametrize(
    "bad_uid",
    [
        "1.2.840.abc.1",  # letters
        "1.2..3",  # empty component
        "1.2.3.",  # trailing dot
        "1.2.-3",  # sign
        "1" * 65,  # over 64 characters
    ],
)
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_malformed_uid_is_refused(node, keyword, bad_uid):
    ds = good_slice()
    setattr(ds, keyword, bad_uid)
    status, comment = send_bad(node, ds)
    assert status == Status.INVALID_UID, comment
    assert keyword in comment
    assert store_files(node.data_dir) == [] and indexed(node.data_dir) == 0
    assert_still_serving(node)


@pytest.mark.parametrize(
    "hostile",
    [
        "../../../../../../tmp/compacs-escape",
        "/tmp/compacs-escape",
        "1.2.3/../../../../compacs-escape",
        "..",
        "1.2." + "3" * 200,
    ],
)
def test_hostile_uid_cannot_escape_the_store(node, hostile, tmp_path):
    """A UID built to escape the store is refused and writes nothing anywhere."""
    before = {p for p in tmp_path.rglob("*")}
    ds = good_slice()
    ds.SOPInstanceUID = hostile
    ds.file_meta.MediaStorageSOPInstanceUID = hostile
    # pynetdicom will not put an over-long UID in a request: then only the data set has it
    request_uid = hostile if len(hostile) <= 64 else "1.2.826.0.1.3680043.10.1010.9"
    status, comment = send_bad(node, ds, sop_instance=request_uid)
    assert status == Status.INVALID_UID, comment
    assert "SOP Instance UID" in comment or "SOPInstanceUID" in comment
    after = {p for p in tmp_path.rglob("*")}
    new = {p for p in after - before if not p.name.startswith("index.sqlite")}
    assert all(p.suffix == ".log" for p in new), new
    assert not Path("/tmp/compacs-escape").exists()
    assert store_files(node.data_dir) == [] and indexed(node.data_dir) == 0
    assert_still_serving(node)


@pytest.mark.parametrize("hostile", ["../../../etc", "1.2.3\\..\\..\\x", "/etc", "1.2\x00/x"])
def test_hostile_series_uid_inside_a_valid_request(node, hostile):
    ds = good_slice()
    ds.SeriesInstanceUID = hostile
    status, comment = send_bad(node, ds)
    assert status == Status.INVALID_UID and "SeriesInstanceUID" in comment
    assert store_files(node.data_dir) == []
    assert_still_serving(node)


def test_sop_instance_uid_differing_from_the_request_is_refused(node):
    ds = good_slice()
    status, comment = send_bad(node, ds, sop_instance="1.2.826.0.1.3680043.10.1010.42")
    assert status == Status.DATASET_MISMATCH
    assert "(0008,0018)" in comment
    ds2 = good_slice(seed=5)
    status, comment = (
        send_raw(
            node.port,
            "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage, but the data set says CT
            str(ds2.SOPInstanceUID),
            ExplicitVRLittleEndian,
            dataset_bytes(ds2),
        ),
        None,
    )
    assert status_of(status) == Status.DATASET_MISMATCH
    assert store_files(node.data_dir) == [] and indexed(node.data_dir) == 0
    assert_still_serving(node)


def test_implicit_vr_sent_under_explicit_context_is_refused(node):
    """Bytes that do not match the negotiated syntax are not stored under a false label."""
    ds = good_slice()
    body = dataset_bytes(ds, implicit=True)
    status, _ = send_bad(node, ds, body=body)
    assert status in (Status.CANNOT_UNDERSTAND, Status.INVALID_UID, Status.DATASET_MISMATCH)
    assert store_files(node.data_dir) == [] and indexed(node.data_dir) == 0
    # and the same bytes under the right context are fine
    response = send_raw(
        node.port, CTImageStorage, str(ds.SOPInstanceUID), ImplicitVRLittleEndian, body
    )
    assert status_of(response) == Status.SUCCESS


class CuttingProxy:
    """A TCP relay to the node that drops both connections (RST) after ``limit`` bytes from
    the client: a peer vanishing in the middle of a C-STORE."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port, self.limit = target_port, limit
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.cut = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        forwarded = 0

        def back() -> None:
            try:
                while data := server.recv(65536):
                    client.sendall(data)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        try:
            while forwarded < self.limit and (data := client.recv(4096)):
                data = data[: self.limit - forwarded]
                server.sendall(data)
                forwarded += len(data)
        finally:
            for s in (server, client):
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                s.close()
            self.cut.set()
            self.listener.close()


def test_peer_vanishing_mid_transfer_leaves_nothing(plain_node):
    node = plain_node  # no compression: nothing else may be writing in store/.tmp
    ds = good_slice(size=512)  # ~512 KiB: the cut falls inside the data set
    proxy = CuttingProxy(node.port, limit=200_000)
    try:
        with association(proxy.port, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
            response = assoc.send_c_store(ds)
            assert "Status" not in response  # no response ever came
    except (AssertionError, OSError, RuntimeError) as exc:
        if "Status" in str(exc):
            raise
    assert proxy.cut.wait(30)
    assert_still_serving(node, seed=77)
    assert indexed(node.data_dir) == 1  # only the good one stored afterwards
    assert not any(p.name.startswith(str(ds.SOPInstanceUID)) for p in store_files(node.data_dir))
    assert list((node.data_dir / "store" / ".tmp").iterdir()) == []


def _private_tmpfs_wrapper(mountpoint: Path, size: str) -> tuple[str, ...]:
    """Run the node in its own mount namespace with ``mountpoint`` on a small tmpfs: a real
    file system that really fills up, seen by the test through /proc/PID/root."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux unshare is needed for the full-disk test")
    userns = () if os.geteuid() == 0 else ("-r",)
    script = f'mount -t tmpfs -o size={size} compacs-full "$1" && shift && exec "$@"'
    return (
        "unshare",
        *userns,
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(mountpoint),
    )


def test_full_disk_answers_out_of_resources_and_recovers(node_factory, tmp_path):
    data_dir = tmp_path / "full"
    data_dir.mkdir()
    config = write_config(tmp_path / "plain.toml", NO_COMPRESSION)
    node = node_factory("full", config=config, wrapper=_private_tmpfs_wrapper(data_dir, "4m"))
    view = Path(f"/proc/{node.proc.pid}/root") / data_dir.relative_to("/")
    ballast = view / "ballast"
    ballast.write_bytes(b"\0" * 1_500_000)  # space the admin can free later

    acknowledged, refused = [], None
    series = ct_series(12, 512, 512, seed=21)
    for ds in series:  # bounded: 12 x 512 KiB cannot fit in 4 MiB
        (status,) = send_datasets(node.port, [ds])
        if status == Status.SUCCESS:
            acknowledged.append(ds)
        else:
            refused = status
            break
    assert refused == Status.OUT_OF_RESOURCES
    assert 1 <= len(acknowledged) < 12
    assert echo(node.port) == Status.SUCCESS

    # every acknowledged instance is whole and indexed; nothing partial is left
    # SQLite resolves the /proc/PID/root link to our own namespace: read a copy instead
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for part in view.glob("index.sqlite*"):
        shutil.copy(part, snapshot / part.name)
    with sqlite3.connect(snapshot / "index.sqlite") as conn:
        rows = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    assert set(rows) == {str(ds.SOPInstanceUID) for ds in acknowledged}
    for ds in acknowledged:
        from pydicom import dcmread

        assert dcmread(view / "store" / rows[str(ds.SOPInstanceUID)]).PixelData == ds.PixelData
    assert list((view / "store" / ".tmp").iterdir()) == []
    stored = [p for p in (view / "store").rglob("*.dcm")]
    assert len(stored) == len(acknowledged)

    # space returns: the node stores again without a restart
    ballast.unlink()
    more = list(ct_series(1, 512, 512, seed=22))
    assert send_datasets(node.port, more) == [Status.SUCCESS]
    assert node.is_running()
