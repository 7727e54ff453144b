"""Fidelity of what compacs encodes, read by decoders compacs did not write (issue 13).

Signed JPEG-LS read by pydicom and DCMTK's dcmdjpls, also after C-GET as stored and after
`compacs compress` repaired streams of the old encoder; lossy derivation details (ratio,
small images, enhanced IODs, lossy J2K input) checked with pydicom's decoders, dcmdump
and dciodvfy.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.multival import MultiValue

from compacs.codecs.decode import source_frames
from compacs.codecs.lossy import derive
from compacs.codecs.pixels import PixelInfo, as_unsigned
from compacs.codecs.streams import jls_precision
from compacs.codecs.table import codec_for
from compacs.codecs.transcode import VerificationFailed, _verify, decompress, transcode
from compacs.dicom.status import Status
from compacs.rules import DEFAULT_POLICY, parse_rule
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import DicomFile, by_name
from tests.support.in_process import (
    fixture_archive,  # noqa: F401 (the archive fixture)
    ingest_file,
    run_jobs,
)
from tests.support.node import NO_COMPRESSION, write_config
from tests.support.scu import c_get, saved, send_files

SIGNED_CT = ["693_UNCI.dcm", "693_UNCR.dcm", "mlut_18.dcm", "J2K_pixelrep_mismatch.dcm"]
JPEG_LS = "1.2.840.10008.1.2.4.80"


def original_pixels(name: str) -> np.ndarray:
    return pydicom.dcmread(by_name(name)).pixel_array


def dcmdjpls_pixels(path: Path, tmp_path: Path) -> np.ndarray:
    """DCMTK decodes the file; pydicom reads DCMTK's native output."""
    if shutil.which("dcmdjpls") is None:
        pytest.fail("DCMTK's dcmdjpls is not installed")
    out = tmp_path / f"{path.name}.dcmdjpls.dcm"
    result = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return pydicom.dcmread(out).pixel_array


def first_precision(path: Path) -> int | None:
    ds = pydicom.dcmread(path)
    return jls_precision(next(generate_frames(ds.PixelData, number_of_frames=1)))


def old_compacs_jpeg_ls(name: str, folder: Path) -> Path:
    """What compacs stored before: imagecodecs' P = 16 with the samples masked to Bits
    Stored (as_unsigned)."""
    ds = pydicom.dcmread(by_name(name))
    info = PixelInfo.of(ds)
    frames = [
        bytes(imagecodecs.jpegls_encode(as_unsigned(f, info))) for f in source_frames(ds, info)
    ]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG_LS
    path = folder / f"old-{name}"
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_paths(data_dir: Path) -> dict[str, Path]:
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        rows = conn.execute("SELECT sop_instance_uid, storage_key FROM instances")
        return {uid: data_dir / "store" / key for uid, key in rows}


# -- A. signed pixels under 16 bits ------------------------------------------------------
@pytest.fixture
def jls_node(node_factory, tmp_path):
    """A node that stores the four signed CT files as JPEG-LS before answering."""
    require_dcmtk()
    config = write_config(tmp_path / "ingest.toml", '[compression]\nwhen = "ingest"\n')
    node = node_factory(config=config)
    files = [DicomFile(by_name(n), *_uids(by_name(n))) for n in SIGNED_CT]
    assert send_files(node.port, files) == [Status.SUCCESS] * len(files)
    return node


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)


def test_stored_signed_jpeg_ls_reads_right_in_pydicom_and_dcmdjpls(jls_node, tmp_path):
    paths = stored_paths(jls_node.data_dir)
    for name in SIGNED_CT:
        stored = paths[_uids(by_name(name))[1]]
        ds = pydicom.dcmread(stored)
        assert ds.file_meta.TransferSyntaxUID == JPEG_LS, name
        original = original_pixels(name)
        assert np.array_equal(ds.pixel_array, original), f"{name}: pydicom"
        assert np.array_equal(dcmdjpls_pixels(stored, tmp_path), original), f"{name}: dcmdjpls"
        assert first_precision(stored) == ds.BitsStored, name


def c_get_as_jpeg_ls(node, study_uid: str, sop_classes: set[str], folder: Path) -> list[Path]:
    """C-GET (Study Root) by a peer that accepts the storage sub-operations in JPEG-LS
    Lossless only: what it gets is the stored stream, written as Part 10 files."""
    contexts = [(sop_class, [JPEG_LS]) for sop_class in sorted(sop_classes)]
    return saved(c_get(node.port, [study_uid], contexts, aet=node.aet, calling="JLSGET"), folder)


def test_c_get_as_stored_gets_a_stream_every_reader_reads_right(jls_node, tmp_path):
    for name in SIGNED_CT:
        header = pydicom.dcmread(by_name(name), stop_before_pixels=True)
        folder = tmp_path / name
        folder.mkdir()
        paths = c_get_as_jpeg_ls(
            jls_node, str(header.StudyInstanceUID), {str(header.SOPClassUID)}, folder
        )
        (got,) = [p for p in paths if pydicom.dcmread(p).SOPInstanceUID == header.SOPInstanceUID]
        ds = pydicom.dcmread(got)
        assert ds.file_meta.TransferSyntaxUID == JPEG_LS, name
        original = original_pixels(name)
        assert np.array_equal(ds.pixel_array, original), f"{name}: pydicom"
        assert np.array_equal(dcmdjpls_pixels(got, tmp_path), original), f"{name}: dcmdjpls"


@pytest.mark.parametrize("name", SIGNED_CT)
def test_verification_reads_jpeg_ls_as_pydicom_does(name, tmp_path):
    """The old stream decodes right in compacs' lenient decoder but not in pydicom: the
    verification must refuse it."""
    old = pydicom.dcmread(old_compacs_jpeg_ls(name, tmp_path))
    assert not np.array_equal(old.pixel_array, original_pixels(name))  # pydicom misreads it
    ds = pydicom.dcmread(by_name(name))
    info = PixelInfo.of(ds)
    (frame,) = source_frames(ds, info)
    stream = next(generate_frames(old.PixelData, number_of_frames=1))
    with pytest.raises(VerificationFailed):
        _verify(codec_for("jpeg-ls"), stream, frame, info, 0, {})


@pytest.mark.parametrize("name", SIGNED_CT)
def test_jpeg_ls_size_with_precision_bits_stored(name, tmp_path):
    """P = Bits Stored is also smaller than the old P = 16 stream (issue: 16-22%)."""
    new = pydicom.dcmread(
        io.BytesIO(transcode(by_name(name).read_bytes(), codec_for("jpeg-ls")).data)
    )
    old = pydicom.dcmread(old_compacs_jpeg_ls(name, tmp_path))
    new_bytes, old_bytes = (
        len(next(generate_frames(d.PixelData, number_of_frames=1))) for d in (new, old)
    )
    assert new_bytes < old_bytes * 0.97, (new_bytes, old_bytes)


def test_compress_repairs_jpeg_ls_stored_by_the_old_encoder(node_factory, tmp_path):
    require_dcmtk()
    node = node_factory(config=write_config(tmp_path / "off.toml", NO_COMPRESSION))
    old = [old_compacs_jpeg_ls(n, tmp_path) for n in SIGNED_CT]
    files = [DicomFile(p, *_uids(p)) for p in old]
    assert send_files(node.port, files) == [Status.SUCCESS] * len(files)
    node.stop()
    dry = node.cli("compress", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "4 instance(s) to compress" in dry.stdout, dry.stdout
    assert dry.stdout.count("JPEG-LS precision P=16 for signed Bits Stored") == 4, dry.stdout
    done = node.cli("compress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compressed 4" in done.stdout and "failed 0" in done.stdout, done.stdout
    paths = stored_paths(node.data_dir)
    for name in SIGNED_CT:
        stored = paths[_uids(by_name(name))[1]]
        original = original_pixels(name)
        assert np.array_equal(pydicom.dcmread(stored).pixel_array, original), name
        assert np.array_equal(dcmdjpls_pixels(stored, tmp_path), original), name
    again = node.cli("compress", "--dry-run")
    assert "0 instance(s) to compress" in again.stdout, again.stdout


# -- I. lossy derivation details ---------------------------------------------------------
def lossy_policy(**rule):
    return replace(DEFAULT_POLICY, rules=(parse_rule({**rule, "lossy": True}, "r"),))


@pytest.mark.parametrize("name", ["mlut_18.dcm", "MR2_UNCR.dcm", "693_UNCI.dcm"])
@pytest.mark.parametrize("codec", ["jpeg-2000-lossy", "htj2k-lossy"])
def test_lossy_ratio_is_counted_on_the_stored_bytes(name, codec):
    """PS3.3 C.7.6.1.1.5: native bytes (Bits Allocated) / encoded bytes within 10%."""
    out, _ = derive(by_name(name).read_bytes(), codec_for(codec), {"ratio": 10})
    derived = pydicom.dcmread(io.BytesIO(out.data))
    fragments = list(generate_frames(derived.PixelData, number_of_frames=1))
    achieved = out.pixel_bytes / sum(len(f) for f in fragments)
    assert 9 <= achieved <= 11, achieved
    recorded = derived["LossyImageCompressionRatio"].value
    assert 9 <= float(recorded[-1] if isinstance(recorded, list | MultiValue) else recorded) <= 11
    original = original_pixels(name).astype(int)
    error = np.abs(derived.pixel_array.astype(int) - original)
    # pydicom's own J2K decoder reads an image, not noise
    assert error.mean() < 0.01 * (original.max() - original.min())


@pytest.mark.parametrize("shape", [(16, 16), (1, 1), (7, 5), (31, 33)])
def test_jpeg_2000_lossy_encodes_small_images(archive, shape):
    store, index = archive
    ds = next(ct_series(1, *shape, seed=3))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    uid = ingest_file(
        store, index, buf.getvalue(), lossy_policy(action="jpeg-2000-lossy", ratio=10)
    )
    (result,) = run_jobs(store, index, lossy_policy(action="jpeg-2000-lossy", ratio=10))
    assert result.state == "derived", result.note
    (derived_uid,) = [
        f["sop_instance_uid"] for f in index.instances() if f["sop_instance_uid"] != uid
    ]
    derived = pydicom.dcmread(io.BytesIO(store.get(index.locate(derived_uid).storage_key)))
    assert derived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    pixels = derived.pixel_array  # pydicom's decoder (pylibjpeg-openjpeg)
    assert pixels.shape == shape
    assert np.abs(pixels.astype(int) - ds.pixel_array.astype(int)).max() < 1000


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dicom3tools' dciodvfy is not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


def test_enhanced_mr_derivation_is_refused_with_a_reason(archive, tmp_path):
    store, index = archive
    policy = lossy_policy(action="jpeg-2000-lossy", ratio=10)
    uid = ingest_file(store, index, by_name("emri_small.dcm").read_bytes(), policy)
    (result,) = run_jobs(store, index, policy)
    assert result.state == "skipped"
    assert result.note.startswith("lossy derivation of Enhanced MR Image is not supported: ")
    assert [f["sop_instance_uid"] for f in index.instances()] == [uid]  # no derivative
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:  # the instance's note says why
        (note,) = conn.execute("SELECT compression_note FROM instances").fetchone()
    assert note == result.note


def test_a_plain_mr_derivative_adds_no_dciodvfy_errors(tmp_path):
    """The derivation attributes of a non-enhanced image satisfy its IOD (dciodvfy)."""
    source = by_name("MR_small.dcm")
    out, _ = derive(source.read_bytes(), codec_for("jpeg-2000-lossy"), {"ratio": 10})
    derived = tmp_path / "derived.dcm"
    derived.write_bytes(out.data)
    strip = lambda lines: {line.split(" - ", 1)[-1] for line in lines}  # noqa: E731
    assert strip(dciodvfy_errors(derived)) <= strip(dciodvfy_errors(source))


@pytest.mark.parametrize("name", ["MR2_J2KI.dcm", "US1_J2KI.dcm", "RG1_J2KI.dcm"])
def test_decompressing_irreversible_j2k_marks_it_lossy(name, tmp_path):
    """ISO 15444-1 A.6.1: COD transformation 0 = 9-7 irreversible, so the decompressed
    object says Lossy Image Compression 01 even when the input did not (PS3.3 C.7.6.1.1.5)."""
    ds = pydicom.dcmread(by_name(name))
    del ds.LossyImageCompression
    out = tmp_path / "native.dcm"
    decompress(ds).save_as(out, enforce_file_format=True)
    result = subprocess.run(
        ["dcmdump", "+P", "0028,2110", str(out)], capture_output=True, text=True
    )
    assert "[01]" in result.stdout, result.stdout + result.stderr
