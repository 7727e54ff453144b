"""C-MOVE and C-GET of a 40-instance JPEG-LS series: the stored bytes sent as they are, the
others decoded ahead in the worker processes (issue 15). Checked with DCMTK movescu/getscu,
storescp and dcmdjpls, and with pynetdicom SCUs reading the wire bytes."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from compacs.codecs.convert import data_set_for
from compacs.codecs.table import codec_for
from compacs.codecs.transcode import transcode
from compacs.codecs.work import decode_for_peer
from compacs.dicom import part10
from compacs.dicom.part10 import file_header
from compacs.dicom.status import Status
from compacs.net import sender
from compacs.net.sender import EncodedDataSet
from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmtk_env, require_dcmtk
from tests.support.dicomfiles import by_name
from tests.support.node import NodeProcess, write_config
from tests.support.procfs import cpu_seconds, descendants
from tests.support.retrieve import StoreSCP, c_move, c_move_cancelled, movescu, retrieve
from tests.support.scu import send_datasets

JLS = "1.2.840.10008.1.2.4.80"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
COUNT = 40
CONFIG = (
    '[compression]\nwhen = "ingest"\nworkers = 2\n'
    '[[compression.rules]]\ncalling_ae = "SEND_KEEP"\naction = "keep"\n'
    '[[compression.rules]]\naction = "jpeg-ls"\n'
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A node (two worker processes) holding a 40-slice CT series stored as JPEG-LS, and
    one CT slice stored as received; two storescp destinations."""
    base = tmp_path_factory.mktemp("ahead")
    unc = StoreSCP(base / "unc", "DEST_UNC", accept_all=False)
    every = StoreSCP(base / "all", "DEST_ALL", accept_all=True)
    node = NodeProcess(
        base / "data",
        config=write_config(base / "node.toml", CONFIG),
        extra_args=(
            "--peer",
            f"DEST_UNC@127.0.0.1:{unc.port}",
            "--peer",
            f"DEST_ALL@127.0.0.1:{every.port}",
        ),
    ).start()
    series = list(ct_series(COUNT, 256, 256, seed=77, patient_id="AHEAD"))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * COUNT
    yield node, {str(ds.SOPInstanceUID): ds for ds in series}, unc, every
    node.stop()
    unc.stop()
    every.stop()


def study(sent: dict[str, Dataset]) -> str:
    return str(next(iter(sent.values())).StudyInstanceUID)


def stored_file(node: NodeProcess, sop_instance_uid: str) -> Path:
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        (key,) = conn.execute(
            "SELECT storage_key FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
    return node.data_dir / "store" / key


def dcmdjpls_pixels(path: Path, tmp: Path) -> np.ndarray:
    """The pixels of a JPEG-LS file as DCMTK's dcmdjpls decodes them."""
    require_dcmtk()
    out = tmp / f"{path.name}.raw.dcm"
    subprocess.run(["dcmdjpls", str(path), str(out)], check=True, capture_output=True)
    return pydicom.dcmread(out).pixel_array


def workers_cpu(node: NodeProcess) -> float:
    """CPU seconds of every process below the node (its worker processes)."""
    total = 0.0
    for pid in descendants(node.proc.pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_seconds(pid)
    return total


def test_stored_as_jpeg_ls(archive):
    node, *_ = archive
    assert set(node.stats()["by_transfer_syntax"]) == {JLS}


def test_movescu_to_an_uncompressed_only_destination_decodes_in_the_worker_processes(archive):
    """Every instance arrives native and bit-exact (pydicom reads storescp's files), and
    the decoding ran in the worker processes, not in the node's (both cores)."""
    node, sent, unc, _ = archive
    unc.clear()
    before = workers_cpu(node)
    result = movescu(node, "DEST_UNC", study(sent))
    spent = workers_cpu(node) - before
    assert result.returncode == 0, result.stderr[-1500:]
    received = unc.received()
    assert set(received) == set(sent)
    for uid, ds in received.items():
        assert str(ds.file_meta.TransferSyntaxUID) in (EXPLICIT, IMPLICIT)
        assert np.array_equal(ds.pixel_array, sent[uid].pixel_array)
    # 40 JPEG-LS decodes of 256x256 slices: several ms of CPU each, in the workers
    assert spent >= 0.05, f"worker processes spent {spent:.3f} s CPU: decoded elsewhere"


def test_movescu_to_a_destination_accepting_everything_gets_the_stored_bytes(archive, tmp_path):
    """Sent as stored: storescp's files are JPEG-LS, their data sets byte-equal to the
    stored files', and dcmdjpls decodes them to the original pixels."""
    node, sent, _, every = archive
    every.clear()
    assert movescu(node, "DEST_ALL", study(sent)).returncode == 0
    files = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in every.folder.iterdir()}
    assert set(files) == set(sent)
    for uid, path in files.items():
        assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == JLS
        assert np.array_equal(dcmdjpls_pixels(path, tmp_path), sent[uid].pixel_array)


@pytest.mark.parametrize("prefer", ["+x=", "+xt"])
def test_getscu_retrieves_bit_exact(archive, tmp_path, prefer):
    """DCMTK getscu preferring uncompressed (compacs decodes) or JPEG-LS (sent as stored):
    every file decodes (dcmdjpls for JPEG-LS) to the original pixels."""
    node, sent, *_ = archive
    out = tmp_path / "got"
    out.mkdir()
    result = retrieve("getscu", node, study(sent), prefer, "-od", str(out))
    assert result.returncode == 0, result.stderr[-1500:]
    files = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    assert set(files) == set(sent)
    for uid, path in files.items():
        syntax = str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
        if syntax == JLS:
            pixels = dcmdjpls_pixels(path, tmp_path)
        else:
            pixels = pydicom.dcmread(path).pixel_array
        assert np.array_equal(pixels, sent[uid].pixel_array)


def _get_ae(*syntaxes: str) -> AE:
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage, list(syntaxes))
    return ae


def c_get_wire(node: NodeProcess, identifier: Dataset, *syntaxes: str) -> tuple[list, dict]:
    """(final status, {SOP Instance UID: (transfer syntax, data set bytes as received)})."""
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = (
            str(event.context.transfer_syntax),
            event.request.DataSet.getvalue(),
        )
        return 0x0000

    assoc = _get_ae(*syntaxes).associate(
        "127.0.0.1",
        node.port,
        ae_title=node.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    return responses, received


def test_c_get_sends_the_stored_data_set_byte_for_byte(archive):
    """C-GET of an object stored as received in Implicit VR Little Endian, whose LO value
    carries two trailing spaces (legal padding, PS3.5 6.2, which pydicom drops once it has
    looked the element up, as it must to encode an implicit VR data set again): the data
    set on the wire is the stored file's, byte for byte (the file split by pynetdicom)."""
    node, *_ = archive
    (ds,) = ct_series(1, 32, 32, seed=78, patient_id="KEEPBYTES")
    ds.SeriesDescription = "AB  "
    ds.file_meta.TransferSyntaxUID = IMPLICIT
    assert send_datasets(node.port, [ds], calling="SEND_KEEP") == [Status.SUCCESS]
    path = stored_file(node, str(ds.SOPInstanceUID))
    meta, offset = split_dataset(path)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ds.StudyInstanceUID
    responses, received = c_get_wire(node, identifier, str(meta.TransferSyntaxUID))
    assert responses[-1][0].Status == Status.SUCCESS
    syntax, wire = received[str(ds.SOPInstanceUID)]
    assert syntax == str(meta.TransferSyntaxUID) == IMPLICIT
    assert b"AB  " in wire
    assert wire == path.read_bytes()[offset:]


def test_c_get_of_the_jpeg_ls_series_sends_the_stored_bytes(archive):
    """Each JPEG-LS data set on the wire equals the stored file's data set (pynetdicom's
    split of the file), and pydicom decodes it to the original pixels."""
    node, sent, *_ = archive
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study(sent)
    responses, received = c_get_wire(node, identifier, JLS)
    assert responses[-1][0].Status == Status.SUCCESS
    assert set(received) == set(sent)
    for uid, (syntax, wire) in received.items():
        path = stored_file(node, uid)
        _, offset = split_dataset(path)
        assert syntax == JLS and wire == path.read_bytes()[offset:]
        ds = pydicom.dcmread(path)
        assert np.array_equal(ds.pixel_array, sent[uid].pixel_array)


def test_a_decode_failure_mid_series_is_one_failed_sub_operation(archive):
    """One stored JPEG-LS stream made undecodable: B000, that UID alone in the Failed SOP
    Instance UID List, the 39 others delivered native and bit-exact."""
    node, sent, unc, _ = archive
    victim = sorted(sent)[COUNT // 2]
    path = stored_file(node, victim)
    saved = path.read_bytes()
    start = saved.index(b"\xff\xd8\xff\xf7")  # SOI, SOF55: the JPEG-LS stream
    path.write_bytes(saved[:start] + b"\0" * 64 + saved[start + 64 :])
    unc.clear()
    try:
        responses = c_move(node, study(sent), "DEST_UNC")
    finally:
        path.write_bytes(saved)
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == COUNT - 1
    uids = failed.FailedSOPInstanceUIDList
    assert ([uids] if isinstance(uids, str) else list(uids)) == [victim]
    received = unc.received()
    assert set(received) == set(sent) - {victim}
    for uid, ds in received.items():
        assert np.array_equal(ds.pixel_array, sent[uid].pixel_array)


def test_c_cancel_with_read_ahead_running_leaves_no_worker_busy(archive):
    """C-CANCEL after the first pending response of a move to the uncompressed-only
    destination (decodes running ahead): FE00 with fewer than 40 completed, and from the
    cancel response on the worker processes spend no CPU (nothing left running)."""
    node, sent, *_ = archive
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
    try:
        final = c_move_cancelled(assoc, study(sent), "DEST_UNC", 9)
        at_cancel = workers_cpu(node)
        time.sleep(1.0)
        after = workers_cpu(node)
    finally:
        assoc.release()
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations < COUNT
    assert after - at_cancel < 0.03, f"workers spent {after - at_cancel:.3f} s after the cancel"


def test_tools_present():
    for tool in ("dcmdjpls", "movescu", "getscu", "storescp"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (DCMTK) is required")
    assert dcmtk_env()["TCP_NODELAY"] == "1"


# -- the pieces, without a network --------------------------------------------------------


def _part10(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _jls_file(ds: Dataset) -> bytes:
    """``ds`` stored as compacs stores it compressed (JPEG-LS, verified)."""
    return transcode(_part10(ds), codec_for("jpeg-ls")).data


def _as_file(data_set: bytes, syntax: str, ds: Dataset) -> Dataset:
    """A data set sent on the wire, read back by pydicom with a File Meta of its syntax."""
    head = file_header(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    return pydicom.dcmread(BytesIO(head + data_set))


def test_the_decoded_data_set_is_pydicoms_encoding_byte_for_byte():
    """Decoded to Explicit VR Little Endian, the stored data set with only Pixel Data
    replaced equals pydicom's own encoding of the decoded data set, and pydicom reads
    the original pixels and every other attribute from it."""
    (ds,) = ct_series(1, 64, 64, seed=79)
    stored = _jls_file(ds)
    sent = data_set_for(stored, EXPLICIT)
    native = pydicom.dcmread(BytesIO(stored))
    native.decompress(generate_instance_uid=False)
    assert sent == encode(native, False, True)  # pynetdicom's (pydicom's) encoder
    back = _as_file(sent, EXPLICIT, ds)
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    for element in ds:
        if element.tag != 0x7FE00010:
            assert back[element.tag].value == element.value


def test_colour_from_jpeg_baseline_is_decoded_to_rgb_by_the_full_encoder():
    """JPEG baseline YBR_FULL_422 decodes to RGB: Photometric Interpretation changes, so
    the data set is encoded whole (no splice), and reads back as RGB."""
    path = by_name("SC_rgb_jpeg_gdcm.dcm")
    data = path.read_bytes()
    sent = data_set_for(data, EXPLICIT)
    original = pydicom.dcmread(path)
    back = _as_file(sent, EXPLICIT, original)
    assert back.PhotometricInterpretation == "RGB"
    assert back.pixel_array.shape == original.pixel_array.shape


def test_the_stored_syntax_is_the_stored_bytes():
    (ds,) = ct_series(1, 16, 16, seed=80)
    stored = _jls_file(ds)
    _, offset = split_dataset_bytes(stored)
    assert data_set_for(stored, JLS) == stored[offset:]
    assert part10.split(stored) == (JLS, offset)


def split_dataset_bytes(data: bytes) -> tuple[Dataset, int]:
    """pynetdicom's split of a Part 10 file into File Meta and data set offset."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        return split_dataset(Path(f.name))


def test_encoded_bytes_go_only_under_their_own_encoding():
    """pynetdicom's send_c_store gets the bytes under the data set's own encoding, and
    None (a failed sub-operation) under another, never bytes labelled wrongly."""
    sender.install()
    ds = EncodedDataSet("1.2.840.10008.5.1.4.1.1.2", "1.2.3", EXPLICIT, b"\x08\x00")
    assert sender.encode(ds, False, True) == b"\x08\x00"
    assert sender.encode(ds, True, True) is None
    plain = Dataset()
    plain.PatientID = "X"
    assert sender.encode(plain, True, True) == encode(plain, True, True)


def test_a_decode_error_is_returned_with_its_reason():
    (ds,) = ct_series(1, 16, 16, seed=81)
    stored = bytearray(_jls_file(ds))
    start = stored.index(b"\xff\xd8\xff\xf7")
    stored[start : start + 64] = b"\0" * 64
    result = decode_for_peer(bytes(stored), EXPLICIT)
    assert result.error and not result.data_set


def test_without_worker_processes_the_node_decodes_itself(tmp_path):
    """``workers = 0``: no worker process; the read-ahead decodes in the node's threads,
    and every instance still arrives native and bit-exact at an uncompressed-only peer."""
    unc = StoreSCP(tmp_path / "unc", "DEST_UNC", accept_all=False)
    config = CONFIG.replace("workers = 2", "workers = 0")
    node = NodeProcess(
        tmp_path / "data",
        config=write_config(tmp_path / "node.toml", config),
        extra_args=("--peer", f"DEST_UNC@127.0.0.1:{unc.port}"),
    ).start()
    try:
        series = list(ct_series(8, 64, 64, seed=82, patient_id="INPROC"))
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 8
        assert descendants(node.proc.pid) == []
        assert set(node.stats()["by_transfer_syntax"]) == {JLS}
        sent = {str(ds.SOPInstanceUID): ds for ds in series}
        result = movescu(node, "DEST_UNC", study(sent))
        assert result.returncode == 0, result.stderr[-1500:]
        received = unc.received()
        assert set(received) == set(sent)
        for uid, ds in received.items():
            assert np.array_equal(ds.pixel_array, sent[uid].pixel_array)
    finally:
        node.stop()
        unc.stop()
