"""The structure check of a received data set (dicom/part10.structure_problem): element
lengths, sequences and fragments (PS3.5 7.1, 7.5, A.4), deflate, on public and cut files."""

from __future__ import annotations

import struct

from pydicom import dcmread

from compacs.dicom.part10 import structure_problem
from compacs.synthetic import ct_series
from tests.support.dicomfiles import by_name, storage_files
from tests.support.scu import dataset_bytes

EXPLICIT = "1.2.840.10008.1.2.1"


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
