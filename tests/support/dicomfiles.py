"""The public DICOM files the tests send: pydicom's test files and the pydicom-data package.

Listed from the installed folders (pydicom.data.get_testdata_files would try the network).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import data_store
import pydicom.data
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom.sop_class import _STORAGE_CLASSES

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
