"""Issue 13, decoding side: what is stored comes out right for every reader.

E. every stored compressed object is retrieved native by a C-GET requestor that accepts
   only Explicit/Implicit VR Little Endian, and its pixels equal an independent decoder's
   (DCMTK's dcmdrle / dcmdjpeg / dcmdjpls on the original file, else pydicom);
F. a YBR JPEG made native is RGB, labelled RGB, and dciodvfy finds no new error;
G. JPEG XL can be entered and left after ingest with the real CLI (JPEG-LS -> JPEG XL ->
   JPEG-LS, C-GET native of a JPEG XL object), and ``smallest`` says why it does not
   reconsider an object already stored in one of its candidates, until ``--retry``.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import DicomFile, storage_files
from tests.support.node import NO_COMPRESSION, NodeProcess, run_cli, write_config
from tests.support.scu import send_datasets, send_files

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
JPEG_LS, JPEG_XL = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.110"
# The three objects the issue names first; the sweep adds every other compressed file.
NAMED = ("SC_rgb_rle_32bit.dcm", "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm")
YBR_JPEG = ("examples_ybr_color.dcm", "color3d_jpeg_baseline.dcm")
# pydicom's README: "A copy of JPEG2000.dcm, with 4 of the encoded pixel data bytes replaced
# with the Sequence Delimiter. Almost certainly not a valid JPEG anymore" (its SIZ marker):
# no decoder reads it, so the only right answer is a failed sub-operation, not pixels.
CORRUPT = "JPEG2000-embedded-sequence-delimiter.dcm"
# DCMTK decoders, independent of compacs and pydicom, per stored syntax
DCMTK_DECODER = {
    "1.2.840.10008.1.2.5": "dcmdrle",
    "1.2.840.10008.1.2.4.50": "dcmdjpeg",
    "1.2.840.10008.1.2.4.51": "dcmdjpeg",
    "1.2.840.10008.1.2.4.57": "dcmdjpeg",
    "1.2.840.10008.1.2.4.70": "dcmdjpeg",
    "1.2.840.10008.1.2.4.80": "dcmdjpls",
    "1.2.840.10008.1.2.4.81": "dcmdjpls",
}
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
LOSSY |= {"1.2.840.10008.1.2.4.91"}


def compressed_files() -> list[DicomFile]:
    """Every compressed storage file of pydicom's test files and pydicom-data, one per SOP
    Instance UID (some are copies of others), the named ones first."""
    files = [f for f in storage_files() if UID(f.transfer_syntax).is_compressed]
    files.sort(key=lambda f: f.name not in NAMED)
    return list({f.sop_instance_uid: f for f in reversed(files)}.values())


def c_get_native(port: int, study_uids: set[str], sop_classes: set[str]):
    """C-GET each study with a pynetdicom requestor that accepts only native syntaxes:
    (received data sets by SOP Instance UID, failed SOP Instance UIDs)."""
    received: dict[str, Dataset] = {}

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title="NATIVEONLY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class, list(NATIVE))
    roles = [build_role(c, scp_role=True) for c in sorted(sop_classes)]
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="COMPACS",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    failed: set[str] = set()
    try:
        for study in sorted(study_uids):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study
            final = None
            for status, ident in assoc.send_c_get(
                identifier, StudyRootQueryRetrieveInformationModelGet
            ):
                final = (status, ident)
            # success, some failed (B000) or all failed (A702): PS3.4 C.4.3.1.3.1
            assert final is not None and final[0].Status in (Status.SUCCESS, 0xB000, 0xA702)
            value = final[1].get("FailedSOPInstanceUIDList") if final[1] is not None else None
            failed |= {str(v) for v in ([value] if isinstance(value, str) else value or []) if v}
    finally:
        assoc.release()
    return received, failed


def dcmtk_reference(f: DicomFile, folder: Path) -> tuple[np.ndarray, str]:
    """The original file's pixels by DCMTK's decoder for its syntax (pydicom's where DCMTK
    has none, i.e. JPEG 2000), and which reader gave them."""
    tool = DCMTK_DECODER.get(f.transfer_syntax)
    if tool is not None:
        out = folder / f"{tool}-{f.name}"
        run = subprocess.run([tool, str(f.path), str(out)], capture_output=True, text=True)
        if run.returncode == 0:
            return pydicom.dcmread(out).pixel_array, tool
    return pydicom.dcmread(f.path).pixel_array, "pydicom"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A node (compression off: objects stay as received) holding every compressed file."""
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("fidelity")
    node = NodeProcess(tmp / "data", config=write_config(tmp / "off.toml", NO_COMPRESSION))
    node.start()
    files = compressed_files()
    statuses = send_files(node.port, files)
    sent = [f for f, status in zip(files, statuses, strict=True) if status == Status.SUCCESS]
    assert {f.name for f in sent} >= set(NAMED)
    studies = {str(pydicom.dcmread(f.path, stop_before_pixels=True).StudyInstanceUID) for f in sent}
    received, failed = c_get_native(node.port, studies, {f.sop_class_uid for f in sent})
    yield sent, received, failed, tmp
    node.stop()


def test_every_stored_object_is_retrieved_native_as_an_independent_decoder_reads_it(stored):
    sent, received, failed, tmp = stored
    by_name = {f.name: f for f in sent}
    assert failed == {by_name[CORRUPT].sop_instance_uid}, "only the corrupt codestream fails"
    measured = {}
    for f in sent:
        if f.name == CORRUPT:
            continue
        got = received[f.sop_instance_uid]
        assert got.file_meta.TransferSyntaxUID in NATIVE, f.name
        if "PixelData" not in pydicom.dcmread(f.path):
            assert "PixelData" not in got, f.name  # e.g. a truncated file: nothing to decode
            continue
        expected, reader = dcmtk_reference(f, tmp)
        pixels = got.pixel_array
        assert pixels.shape == expected.shape, f.name
        error = float(np.abs(pixels.astype(np.float64) - expected.astype(np.float64)).max())
        measured[f.name] = (f.transfer_syntax, reader, error)
    print("\n".join(f"{n}: {ts} vs {r}: max error {e}" for n, (ts, r, e) in measured.items()))
    wrong = {n: m for n, m in measured.items() if m[2] != 0}
    assert wrong == {}  # lossless bit-exact, lossy equal to the reference decoder's output
    assert measured["SC_rgb_rle_32bit.dcm"][1] == "dcmdrle"
    assert measured["JPEG-lossy.dcm"][1] == "dcmdjpeg"


@pytest.mark.parametrize("name", YBR_JPEG)  # both have one SOP Instance UID: a node each
def test_a_decompressed_ybr_jpeg_is_rgb_valid_for_its_iod_and_as_dcmdjpeg_decodes_it(
    plain_node, name, tmp_path
):
    require_dcmtk()
    if shutil.which("dciodvfy") is None:
        pytest.fail("dicom3tools' dciodvfy is not installed")
    f = next(f for f in storage_files() if f.name == name)
    assert send_files(plain_node.port, [f]) == [Status.SUCCESS]
    study = str(pydicom.dcmread(f.path, stop_before_pixels=True).StudyInstanceUID)
    received, _ = c_get_native(plain_node.port, {study}, {f.sop_class_uid})
    got = received[f.sop_instance_uid]
    assert got.file_meta.TransferSyntaxUID in NATIVE
    assert got.PhotometricInterpretation == "RGB"
    out = tmp_path / name
    got.save_as(out, enforce_file_format=True)

    def errors(path: Path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        return {line for line in (run.stdout + run.stderr).splitlines() if "Error" in line}

    new = errors(out) - errors(f.path)
    assert new == set(), new
    expected, reader = dcmtk_reference(f, tmp_path)
    assert reader == "dcmdjpeg"
    error = np.abs(got.pixel_array.astype(int) - expected.astype(int)).max()
    print(f"{name}: max difference to dcmdjpeg's RGB {error}")
    assert error <= 1


# -- G. JPEG XL in and out after ingest, with the real CLI ------------------------------
def rules(action: str, *, when: str = "deferred", require_smaller: bool = True) -> str:
    rule = f'[[compression.rules]]\nmodality = "CT"\naction = "{action}"\n'
    if action == "smallest":
        rule += 'candidates = ["jpeg-ls", "jpeg-xl"]\n'
    smaller = "true" if require_smaller else "false"
    return f'[compression]\nwhen = "{when}"\nrequire_smaller = {smaller}\n{rule}'


def stored_objects(data_dir: Path) -> dict[str, tuple[str, Path]]:
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        rows = conn.execute(
            "SELECT sop_instance_uid, transfer_syntax_stored, storage_key FROM instances"
        )
        return {uid: (ts, data_dir / "store" / key) for uid, ts, key in rows}


def compress(data_dir: Path, config: Path, *args: str) -> str:
    result = run_cli("compress", "--config", str(config), "--data-dir", str(data_dir), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def ct_as_jpeg_ls(tmp_path):
    """A real node that stored a CT series as JPEG-LS at ingest, then stopped."""
    series = {str(ds.SOPInstanceUID): ds for ds in ct_series(4, 128, 128, seed=13)}
    config = write_config(tmp_path / "jls.toml", rules("jpeg-ls", when="ingest"))
    node = NodeProcess(tmp_path / "data", config=config).start()
    try:
        assert send_datasets(node.port, series.values()) == [Status.SUCCESS] * len(series)
    finally:
        node.stop()
    assert {ts for ts, _ in stored_objects(node.data_dir).values()} == {JPEG_LS}
    return node, series


def test_jpeg_xl_is_entered_and_left_after_ingest_bit_exact(ct_as_jpeg_ls, tmp_path):
    require_dcmtk()
    node, series = ct_as_jpeg_ls
    to_jxl = write_config(tmp_path / "jxl.toml", rules("jpeg-xl"))
    out = compress(node.data_dir, to_jxl)
    assert "compressed 4" in out and "failed 0" in out, out
    objects = stored_objects(node.data_dir)
    assert {ts for ts, _ in objects.values()} == {JPEG_XL}
    for uid, (_, path) in objects.items():
        ds = pydicom.dcmread(path)
        (fragment,) = generate_frames(ds.PixelData, number_of_frames=1)
        # no DICOM reader here decodes JPEG XL: libjxl on the stream vs the original pixels
        assert np.array_equal(imagecodecs.jpegxl_decode(fragment), series[uid].pixel_array)

    # C-GET native of the JPEG XL objects
    serving = NodeProcess(node.data_dir, config=to_jxl).start()
    try:
        study = next(iter(series.values())).StudyInstanceUID
        received, failed = c_get_native(serving.port, {study}, {"1.2.840.10008.5.1.4.1.1.2"})
    finally:
        serving.stop()
    assert failed == set() and received.keys() == series.keys()
    for uid, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID in NATIVE
        assert np.array_equal(ds.pixel_array, series[uid].pixel_array)

    # and back to JPEG-LS (larger here than JPEG XL, so require_smaller = false lets it
    # replace them): DCMTK and pydicom decode it bit-exact
    back = rules("jpeg-ls", require_smaller=False)
    out = compress(node.data_dir, write_config(tmp_path / "back.toml", back))
    assert "compressed 4" in out and "failed 0" in out, out
    objects = stored_objects(node.data_dir)
    assert {ts for ts, _ in objects.values()} == {JPEG_LS}
    for uid, (_, path) in objects.items():
        decoded = tmp_path / f"{uid}.dcm"
        subprocess.run(["dcmdjpls", str(path), str(decoded)], check=True)
        assert np.array_equal(pydicom.dcmread(decoded).pixel_array, series[uid].pixel_array)
        assert np.array_equal(pydicom.dcmread(path).pixel_array, series[uid].pixel_array)


def test_smallest_says_why_it_keeps_a_candidate_and_retry_compares(ct_as_jpeg_ls, tmp_path):
    node, series = ct_as_jpeg_ls
    smallest = write_config(tmp_path / "smallest.toml", rules("smallest"))
    dry = compress(node.data_dir, smallest, "--dry-run")
    assert "0 instance(s) to compress" in dry
    assert re.search(r"not planned: 4 already in jpeg-ls, a candidate of smallest .*--retry", dry)
    sizes = {uid: path.stat().st_size for uid, (_, path) in stored_objects(node.data_dir).items()}
    assert "4 instance(s) to compress" in compress(node.data_dir, smallest, "--retry", "--dry-run")
    out = compress(node.data_dir, smallest, "--retry")
    print(dry, out)
    assert "failed 0" in out, out
    done = re.search(r"compressed (\d+), derived lossy 0, kept (\d+)", out)
    assert done and int(done[1]) + int(done[2]) == 4, out
    for uid, (ts, path) in stored_objects(node.data_dir).items():
        assert ts in (JPEG_LS, JPEG_XL)
        assert path.stat().st_size <= sizes[uid]  # replaced only by a smaller encoding
        ds = pydicom.dcmread(path)
        (fragment,) = generate_frames(ds.PixelData, number_of_frames=1)
        decode = imagecodecs.jpegxl_decode if ts == JPEG_XL else imagecodecs.jpegls_decode
        assert np.array_equal(decode(fragment), series[uid].pixel_array)
