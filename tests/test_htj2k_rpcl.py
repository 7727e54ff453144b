"""HTJ2K Lossless RPCL (1.2.840.10008.1.2.4.202) as a syntax compacs writes (issue 16).

Real files stored through the node under a rule ``action = "htj2k-rpcl"``, fetched with a
pynetdicom C-GET and decoded by pydicom's own decoder (pylibjpeg-openjpeg) bit-exact
against the originals; the streams' coding style read by OpenJPEG's ``opj_dump`` and their
tile-parts walked here with struct, not by compacs's parser. PS3.5 8.2.14 / A.4.4
(Supplement 235) ask of the syntax: reversible, RPCL, TLM, one tile-part per resolution,
a base resolution of at most 64.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian

from compacs.codecs.table import codec_for
from compacs.codecs.transcode import VerificationFailed, transcode
from compacs.dicom.status import Status
from compacs.rules import parse_rule
from compacs.synthetic import ct_series
from tests.support.dicomfiles import by_name
from tests.support.node import NodeProcess, write_config
from tests.support.scu import c_get, send_datasets

RPCL = "1.2.840.10008.1.2.4.202"
# signed 16 (CT_small, MR_small), RGB (US1), signed Bits Stored 14 (693), 10 frames (emri)
FILES = ["CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "693_UNCR.dcm", "emri_small.dcm"]
CONFIG = """[compression]
when = "ingest"
[[compression.rules]]
calling_ae = "SEND_RPCL"
action = "htj2k-rpcl"
[[compression.rules]]
calling_ae = "SEND_JLS"
action = "jpeg-ls"
"""


# -- independent readers of the codestream ------------------------------------------------
@dataclass(frozen=True)
class OpjDump:
    """What OpenJPEG's opj_dump reads in a codestream's main header."""

    progression: int  # prg (ISO 15444-1 Table A.16: 2 = RPCL)
    resolutions: int  # numresolutions of component 0
    reversible: bool  # qmfbid = 1: the 5-3 wavelet
    markers: tuple[int, ...]  # the main header's marker list


def opj_dump(stream: bytes, folder: Path) -> OpjDump:
    if shutil.which("opj_dump") is None:
        pytest.fail("OpenJPEG's opj_dump is not installed: `make deps-system` installs it")
    path = folder / "frame.j2k"
    path.write_bytes(stream)
    out = subprocess.run(["opj_dump", "-i", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout

    def field(name: str) -> str:
        found = re.search(rf"\b{name}=(\w+)", text)
        assert found, f"opj_dump printed no {name}:\n{text}"
        return found.group(1)

    markers = tuple(int(m, 16) for m in re.findall(r"type=(0x[0-9a-f]+)", text))
    return OpjDump(
        int(field("prg"), 16), int(field("numresolutions")), field("qmfbid") == "1", markers
    )


def tile_parts(stream: bytes) -> list[tuple[int, int, int]]:
    """(Isot, TPsot, TNsot) of each tile-part (ISO 15444-1 A.4.2), walking the main header
    by its segment lengths and the tile-parts by Psot."""
    assert stream[:4] == b"\xff\x4f\xff\x51", "no SOC + SIZ"
    pos = 2
    while struct.unpack_from(">H", stream, pos)[0] != 0xFF90:
        pos += 2 + struct.unpack_from(">H", stream, pos + 2)[0]
    parts = []
    while struct.unpack_from(">H", stream, pos)[0] == 0xFF90:
        _, _, tile, psot, part, count = struct.unpack_from(">HHHIBB", stream, pos)
        parts.append((tile, part, count))
        pos += psot
    assert stream[pos : pos + 2] == b"\xff\xd9", "tile-parts do not end at EOC"
    return parts


def assert_rpcl(stream: bytes, rows: int, columns: int, folder: Path) -> None:
    """The stream meets what PS3.5 8.2.14 / A.4.4 ask of .4.202, as outside readers see it."""
    dump = opj_dump(stream, folder)
    assert dump.progression == 2, f"progression {dump.progression}, not RPCL"
    assert dump.reversible
    assert 0xFF55 in dump.markers, "no TLM marker segment in the main header"
    base = -(-max(rows, columns) // 2 ** (dump.resolutions - 1))
    assert base <= 64, f"base resolution {base} with {dump.resolutions} resolutions"
    parts = tile_parts(stream)
    assert [p[1] for p in parts] == list(range(dump.resolutions)), parts  # one per resolution
    assert {p[2] for p in parts} == {dump.resolutions}, parts
    assert {p[0] for p in parts} == {0}, parts


# -- the node ------------------------------------------------------------------------------
def originals() -> dict[str, Dataset]:
    """SOP Instance UID -> the data set sent: the real files and a generated CT series."""
    out = {}
    for name in FILES:
        ds = pydicom.dcmread(by_name(name))
        out[str(ds.SOPInstanceUID)] = ds
    for ds in ct_series(3, 256, 256, seed=16, patient_id="RPCL"):
        out[str(ds.SOPInstanceUID)] = ds
    return out


@pytest.fixture(scope="module")
def rpcl_node(tmp_path_factory):
    """A node that stores what SEND_RPCL sends as .4.202 and what SEND_JLS sends as
    JPEG-LS, before answering."""
    base = tmp_path_factory.mktemp("rpcl")
    node = NodeProcess(base / "data", config=write_config(base / "node.toml", CONFIG))
    try:
        node.start()
        sent = originals()
        assert send_datasets(node.port, sent.values(), calling="SEND_RPCL") == [
            Status.SUCCESS
        ] * len(sent)
        jls = list(ct_series(2, 128, 128, seed=61, patient_id="RPCLJLS"))
        assert send_datasets(node.port, jls, calling="SEND_JLS") == [Status.SUCCESS] * 2
        yield node, sent, {str(ds.SOPInstanceUID): ds for ds in jls}
    finally:
        node.stop()


def c_get_rpcl(node, study_uid: str, sop_classes: set[str], syntaxes: list[str]) -> list[Dataset]:
    """C-GET (Study Root) of one study by a peer that offers each syntax in a context of
    its own for each storage SOP class: the node picks among them."""
    contexts = [(c, [syntax]) for c in sorted(sop_classes) for syntax in syntaxes]
    return c_get(node.port, [study_uid], contexts, aet=node.aet, calling="RPCLGET")


def frames(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def test_rule_stores_rpcl_that_pydicom_decodes_bit_exact(rpcl_node, tmp_path):
    """Offered both .4.202 and Explicit VR Little Endian, the node sends what it stored
    as it is: .4.202 for every object, so the rule stored them so."""
    node, sent, _ = rpcl_node
    checked = set()
    for study in {str(ds.StudyInstanceUID) for ds in sent.values()}:
        classes = {str(ds.SOPClassUID) for ds in sent.values()}
        for ds in c_get_rpcl(node, study, classes, [RPCL, ExplicitVRLittleEndian]):
            uid = str(ds.SOPInstanceUID)
            assert ds.file_meta.TransferSyntaxUID == RPCL, uid
            original = sent[uid]
            assert np.array_equal(ds.pixel_array, original.pixel_array), uid  # pydicom
            for stream in frames(ds):
                assert_rpcl(stream, ds.Rows, ds.Columns, tmp_path)
            checked.add(uid)
    assert checked == set(sent)


def test_retrieve_transcodes_to_rpcl_for_a_peer_that_takes_only_it(rpcl_node, tmp_path):
    node, _, jls = rpcl_node
    study = str(next(iter(jls.values())).StudyInstanceUID)
    got = c_get_rpcl(node, study, {str(ds.SOPClassUID) for ds in jls.values()}, [RPCL])
    assert {str(ds.SOPInstanceUID) for ds in got} == set(jls)
    for ds in got:
        assert ds.file_meta.TransferSyntaxUID == RPCL
        assert np.array_equal(ds.pixel_array, jls[str(ds.SOPInstanceUID)].pixel_array)
        (stream,) = frames(ds)
        assert_rpcl(stream, ds.Rows, ds.Columns, tmp_path)


# -- the codec row -------------------------------------------------------------------------
def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_side_over_2048_gets_more_decompositions(tmp_path):
    """OpenJPH's 5 decompositions leave a base resolution of 132 from 4200 columns: 7."""
    (ds,) = ct_series(1, 40, 4200, seed=5, patient_id="WIDE")
    encoded = pydicom.dcmread(io.BytesIO(transcode(part10(ds), codec_for("htj2k-rpcl")).data))
    (stream,) = frames(encoded)
    assert opj_dump(stream, tmp_path).resolutions == 8
    assert_rpcl(stream, 40, 4200, tmp_path)
    assert np.array_equal(encoded.pixel_array, ds.pixel_array)


def test_verification_refuses_a_plain_htj2k_stream_under_the_rpcl_label(tmp_path):
    """The .4.201 encoder's stream (no TLM, one tile-part: opj_dump shows no TLM) decodes
    bit-exact, but may not be stored as .4.202."""
    data = by_name("CT_small.dcm").read_bytes()
    plain = pydicom.dcmread(io.BytesIO(transcode(data, codec_for("htj2k")).data))
    (stream,) = frames(plain)
    assert 0xFF55 not in opj_dump(stream, tmp_path).markers
    assert len(tile_parts(stream)) == 1
    mislabelled = replace(codec_for("htj2k-rpcl"), encode=codec_for("htj2k").encode)
    with pytest.raises(VerificationFailed, match=r"PS3\.5 8\.2\.14.*no TLM marker segment"):
        transcode(data, mislabelled)


def test_policy_names_the_row():
    rule = parse_rule({"action": "smallest", "candidates": ["jpeg-ls", "htj2k-rpcl"]}, "r")
    assert [c.transfer_syntax for c in rule.codecs] == ["1.2.840.10008.1.2.4.80", RPCL]
    assert codec_for(RPCL).name == "htj2k-rpcl" and codec_for(RPCL).lossless
