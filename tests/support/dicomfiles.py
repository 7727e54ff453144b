"""The public DICOM files the tests send: pydicom's test files and the pydicom-data package.

Listed from the installed folders (pydicom.data.get_testdata_files would try the network);
with the damaged ones a careful archive must refuse (EXPECTED_REFUSALS), and generated data
sets written out as Part 10 files (write_files).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import data_store
import pydicom.data
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.sop_class import _STORAGE_CLASSES

from compacs.dicom.status import Status

STORAGE_SOP_CLASSES = frozenset(_STORAGE_CLASSES.values())

FOLDERS = (
    Path(pydicom.data.__file__).parent / "test_files",
    Path(data_store.__file__).parent / "data",
)


@dataclass(frozen=True)
class DicomFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str

    @property
    def name(self) -> str:
        return self.path.name


@functools.cache
def all_files() -> tuple[Path, ...]:
    """Every regular file in both folders, recursively, sorted."""
    found = []
    for folder in FOLDERS:
        for dirpath, _, filenames in os.walk(folder):
            found += [Path(dirpath) / n for n in filenames]
    return tuple(sorted(found))


@functools.cache
def storage_files() -> tuple[DicomFile, ...]:
    """Part 10 files of a storage SOP class pynetdicom knows: what a storage SCU can send."""
    out = []
    for path in all_files():
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        sop_class = ds.get("SOPClassUID")
        if ts and sop_class in STORAGE_SOP_CLASSES and ds.get("SOPInstanceUID"):
            out.append(DicomFile(path, str(sop_class), str(ds.SOPInstanceUID), str(ts)))
    return tuple(out)


def by_name(name: str) -> Path:
    for path in all_files():
        if path.name == name:
            return path
    raise FileNotFoundError(name)


# Files among the public test data that a careful archive must refuse, and why.
# Each of these is a deliberately damaged fixture of pydicom's test suite.
EXPECTED_REFUSALS = {
    # (0008,0018) in the data set differs from the file meta / request UID
    "badVR.dcm": Status.DATASET_MISMATCH,
    "rtdose.dcm": Status.DATASET_MISMATCH,
    "rtdose_1frame.dcm": Status.DATASET_MISMATCH,
    "rtdose_expb.dcm": Status.DATASET_MISMATCH,
    "rtdose_expb_1frame.dcm": Status.DATASET_MISMATCH,
    "rtplan.dcm": Status.DATASET_MISMATCH,
    # no Study Instance UID: codec fixtures stripped to the pixel module
    "JPEGLSNearLossless_08.dcm": Status.INVALID_UID,
    "JPEGLSNearLossless_16.dcm": Status.INVALID_UID,
    "SC_rgb_jls_lossy_line.dcm": Status.INVALID_UID,
    "SC_rgb_jls_lossy_sample.dcm": Status.INVALID_UID,
    # UIDs replaced by SHA-256 hex strings (anonymised upload): not UIDs (PS3.5 9.1)
    "bad_sequence.dcm": Status.INVALID_UID,
    # pixel data shorter than declared / encapsulation without its delimiter
    "MR_truncated.dcm": Status.CANNOT_UNDERSTAND,
    "emri_small_jpeg_2k_lossless_too_short.dcm": Status.CANNOT_UNDERSTAND,
    "rtplan_truncated.dcm": Status.CANNOT_UNDERSTAND,
    # an Implicit VR data set labelled Explicit VR Little Endian (DCMTK cannot read it
    # either): stored under that label it would be unreadable to peers
    "SC_rgb_jpeg.dcm": Status.CANNOT_UNDERSTAND,
}


def write_files(folder: Path, datasets: list[Dataset]) -> dict[Path, str]:
    """``datasets`` saved as Part 10 files 0000.dcm, 0001.dcm ... in ``folder``: each
    file's path and its SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for n, ds in enumerate(datasets):
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[path] = str(ds.SOPInstanceUID)
    return out
