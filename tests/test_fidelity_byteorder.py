"""Explicit VR Big Endian input keeps every value when compacs rewrites it (issue 13, B).

Every big endian storage file of pydicom's test files and pydicom-data is sent to two real
nodes: one that compresses at ingest (the stored object is rewritten in JPEG-LS) and one
that stores as received. What the first stored, and what C-GET returns from both (native,
and JPEG-LS from the second), is read by readers compacs does not contain: pydicom (each
element's value as its VR says, the pixels), DCMTK (dcmdump's values, dcmdjpls's pixels)
and dicom3tools (dciodvfy), and compared with the original file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from compacs.codecs.convert import convert
from compacs.dicom.status import Status
from compacs.net.reactor_guard import keep_responses
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import EXPECTED_REFUSALS, DicomFile, by_name, storage_files
from tests.support.node import NodeProcess, write_config
from tests.support.scu import send_files
from tests.support.stored import stored_path

# the big endian files the node accepts (rtdose_expb*: their SOP Instance UIDs disagree)
BIG_ENDIAN = [
    f
    for f in storage_files()
    if f.transfer_syntax == ExplicitVRBigEndian and f.name not in EXPECTED_REFUSALS
]
# several files share a SOP Instance UID: each is sent in turn and replaces the last
REPLACE = '[ingest]\nduplicates = "replace"\n'
COMPRESSING = REPLACE + '[compression]\nwhen = "ingest"\n'
STORING = REPLACE + '[compression]\nwhen = "off"\n'

PIXEL_DATA = 0x7FE00010
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # PS3.5 6.2
# Planar Configuration: compressed streams are colour-by-pixel (PS3.5 8.2) and stay so
# when decoded; the pixels themselves are compared decoded, with either configuration
REARRANGED = {0x00280006}


def require_tools() -> None:
    require_dcmtk()
    for tool in ("dcmdjpls", "dcmdump", "dciodvfy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run the suite with `make test`")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    base = tmp_path_factory.mktemp("byteorder")
    compressing = NodeProcess(
        base / "compressing", config=write_config(base / "c.toml", COMPRESSING)
    ).start()
    storing = NodeProcess(base / "storing", config=write_config(base / "s.toml", STORING))
    try:
        yield compressing, storing.start()
    finally:
        compressing.stop()
        storing.stop()


# -- what a reader finds in a file ------------------------------------------------------
def _words(value: bytes, vr: str, byteorder: str) -> tuple[int, ...]:
    """An OW/OF/OL/OD/OV value as the numbers its VR's words hold in ``byteorder``."""
    size = WORD_BYTES[vr]
    whole = len(value) - len(value) % size
    return tuple(np.frombuffer(value[:whole], dtype=f"{byteorder}u{size}").tolist())


def values(ds: Dataset, path: tuple = ()) -> Iterator[tuple[tuple, str, Any]]:
    """(path, VR, value) of every element but the file meta, the retired Group Lengths
    (pydicom does not write them, PS3.5 7.2) and the Pixel Data (compared decoded)."""
    byteorder = ">" if ds.original_encoding[1] is False else "<"
    for elem in ds:
        if elem.tag.group == 2 or elem.tag.element == 0 or elem.tag == PIXEL_DATA:
            continue
        where = (*path, int(elem.tag))
        if elem.VR == "SQ":
            yield where, "SQ", len(elem.value)
            for n, item in enumerate(elem.value):
                yield from values(item, (*where, n))
        elif elem.VR in WORD_BYTES and isinstance(elem.value, bytes):
            yield where, elem.VR, _words(elem.value, elem.VR, byteorder)
        else:
            yield where, elem.VR, elem.value


def dump(path: Path) -> list[str]:
    """dcmdump's lines (values in full) without the file meta, the Group Lengths, the
    Pixel Data and the trailing comments (lengths differ between encodings)."""
    out = subprocess.run(
        ["dcmdump", "+L", "-q", str(path)], capture_output=True, text=True, timeout=120
    ).stdout
    lines = []
    for line in out.splitlines():
        tag = re.match(r"\s*\(([0-9a-f]{4}),([0-9a-f]{4})\)", line)
        if tag is None or tag[1] == "0002" or tag[2] == "0000" or tag[0].strip() == "(7fe0,0010)":
            continue
        if tag[1] == "fffe":  # item and delimiter lines: defined vs undefined length
            continue
        lines.append(line.split("#")[0].rstrip())
    return lines


def dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}


def dcmdjpls_pixels(path: Path, folder: Path) -> np.ndarray:
    out = folder / f"{path.stem}.dcmdjpls.dcm"
    proc = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return pydicom.dcmread(out).pixel_array


def assert_same_values(original: Path, output: Path, folder: Path) -> None:
    """Every element of ``output`` holds the value it holds in ``original``, for pydicom,
    DCMTK and dciodvfy."""
    before, after = pydicom.dcmread(original), pydicom.dcmread(output)
    expected = {p: (vr, v) for p, vr, v in values(before) if p[-1] not in REARRANGED}
    found = {p: (vr, v) for p, vr, v in values(after) if p[-1] not in REARRANGED}
    assert expected, f"{original.name}: pydicom found no elements"
    changed = {p: (expected.get(p), found.get(p)) for p in expected.keys() | found.keys()}
    changed = {p: pair for p, pair in changed.items() if pair[0] != pair[1]}
    assert not changed, f"{output.name}: values changed: " + "; ".join(
        f"{'/'.join(f'{x:08X}' for x in p)}: {str(a)[:80]} -> {str(b)[:80]}"
        for p, (a, b) in sorted(changed.items())[:5]
    )
    assert np.array_equal(before.pixel_array, after.pixel_array), f"{output.name}: pixels"
    if after.file_meta.TransferSyntaxUID == JPEGLSLossless:
        assert np.array_equal(before.pixel_array, dcmdjpls_pixels(output, folder)), output.name

    skip_dump = {f"({t >> 16:04x},{t & 0xFFFF:04x})" for t in REARRANGED}
    lines_before = [ln for ln in dump(original) if ln.strip()[:11] not in skip_dump]
    lines_after = [ln for ln in dump(output) if ln.strip()[:11] not in skip_dump]
    assert lines_before, f"dcmdump could not read {original}"
    diff = [(a, b) for a, b in zip(lines_before, lines_after, strict=False) if a != b]
    assert len(lines_before) == len(lines_after) and not diff, (
        f"{output.name}: dcmdump differs: {[(a[:90], b[:90]) for a, b in diff[:3]]}"
    )
    new_errors = dciodvfy_errors(output) - dciodvfy_errors(original)
    assert not new_errors, f"{output.name}: dciodvfy: {sorted(new_errors)}"


# -- C-GET with pynetdicom, the received bytes written as they came ---------------------
def c_get(node: NodeProcess, f: DicomFile, syntax: str, folder: Path) -> Path:
    """C-GET (Study Root, IMAGE level) of ``f``'s instance, offering only ``syntax``;
    the received data set is written as it was sent, without a decode."""
    header = pydicom.dcmread(f.path, stop_before_pixels=True)
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(event.encoded_dataset())
        return Status.SUCCESS

    ae = AE(ae_title="BEGETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(f.sop_class_uid, [syntax])
    assoc = keep_responses(
        ae.associate(
            "127.0.0.1",
            node.port,
            ae_title=node.aet,
            ext_neg=[build_role(f.sop_class_uid, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
    )
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = header.StudyInstanceUID
        identifier.SeriesInstanceUID = header.SeriesInstanceUID
        identifier.SOPInstanceUID = f.sop_instance_uid
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == Status.SUCCESS and len(received) == 1, (
        f"{f.name}: C-GET in {syntax} ended with 0x{int(final.Status):04X}, "
        f"{len(received)} received"
    )
    out = folder / f"{f.path.stem}.get-{syntax}.dcm"
    out.write_bytes(received[0])
    return out


def compressible(f: DicomFile) -> bool:
    return int(pydicom.dcmread(f.path, stop_before_pixels=True).BitsAllocated) in (8, 16)


# (node, what is read): the compressing node's stored object (rewritten in JPEG-LS when
# it carries the pixels) and its C-GET in Explicit VR Little Endian; the storing node's
# (big endian as received) C-GET in Explicit VR Little Endian and in JPEG-LS
ROUTES = {
    "stored-compressed": ("compressing", None),
    "get-native-of-compressed": ("compressing", ExplicitVRLittleEndian),
    "get-native-of-big-endian": ("storing", ExplicitVRLittleEndian),
    "get-jpeg-ls-of-big-endian": ("storing", JPEGLSLossless),
}
PALETTE = ("gdcm-US-ALOKA-16_big.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm")


CASES = [
    pytest.param(f, route, id=f"{f.name}-{route}")
    for f in BIG_ENDIAN
    for route, (_, syntax) in ROUTES.items()
    if syntax != JPEGLSLossless or compressible(f)  # JPEG-LS carries Bits Allocated 8 and 16
]


@pytest.mark.parametrize(("f", "route"), CASES)
def test_big_endian_input_keeps_every_value_when_rewritten(nodes, f, route, tmp_path):
    require_tools()
    which, syntax = ROUTES[route]
    node = nodes[0] if which == "compressing" else nodes[1]
    assert send_files(node.port, [f]) == [Status.SUCCESS], node.log()[-2000:]
    if syntax is None:
        output = stored_path(node.data_dir, f.sop_instance_uid)
        if f.name in PALETTE:  # the rewrite this test is about happened
            meta = pydicom.dcmread(output, stop_before_pixels=True).file_meta
            assert meta.TransferSyntaxUID == JPEGLSLossless
    else:
        output = c_get(node, f, syntax, tmp_path)
    assert_same_values(f.path, output, tmp_path)


def test_the_segmented_lut_keeps_its_values_in_dcmdump(nodes, tmp_path):
    """The defect as reported: gdcm-US-ALOKA-16_big's segmented red LUT began
    0000\\0002\\0000\\7070 and came out 0000\\0200\\0000\\7070 (Orthanc aborted it)."""
    require_tools()
    compressing, _ = nodes
    (f,) = [f for f in BIG_ENDIAN if f.name == "gdcm-US-ALOKA-16_big.dcm"]
    assert send_files(compressing.port, [f]) == [Status.SUCCESS]
    for output in (
        stored_path(compressing.data_dir, f.sop_instance_uid),
        c_get(compressing, f, ExplicitVRLittleEndian, tmp_path),
    ):
        (line,) = [ln for ln in dump(output) if ln.startswith("(0028,1221)")]
        assert line.startswith("(0028,1221) OW 0000\\0002\\0000\\7070\\0001\\0005\\c0c0"), line


@pytest.mark.parametrize(
    ("name", "twin"),
    [("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"), ("rtdose_expb.dcm", "rtdose.dcm")],
)
def test_32_bit_pixel_data_in_ow_is_swapped_by_sample(name, twin, tmp_path):
    """The only OW Pixel Data with Bits Allocated 32 (the node refuses these files: their
    SOP Instance UIDs disagree), converted as retrieve, forwarding and the web download
    convert: little endian, with the doses of the little endian twin pydicom ships
    (DCMTK's dcmconv swaps such data by 16-bit words and gets other numbers)."""
    require_tools()
    converted = convert(by_name(name).read_bytes(), ExplicitVRLittleEndian).dataset
    out = tmp_path / name
    pydicom.dcmwrite(out, converted, enforce_file_format=True)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert_same_values(by_name(name), out, tmp_path)
    doses = pydicom.dcmread(by_name(twin)).pixel_array
    assert np.array_equal(pydicom.dcmread(out).pixel_array, doses)
