"""bench/storage_corpus.py kept from rotting: its corpus selection and table on two files,
compacs only (no Orthanc), through the network with DCMTK storescu and pynetdicom."""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit

from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import by_name
from tests.support.node import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import storage_corpus as bench

CT = "CT_small.dcm"
JPEG_FILE = "SC_rgb_jpeg_dcmtk.dcm"


def test_selection_groups_lossless_and_jpeg_baseline_files() -> None:
    picked, left_out = bench.select()
    picks = {path.name: group for path, group in picked}
    assert picks[CT] == bench.LOSSLESS
    assert picks[JPEG_FILE] == bench.JPEG
    jpeg = [name for name, group in picks.items() if group == bench.JPEG]
    for name in jpeg:  # pydicom's reader, not the bench's, says what each file is
        ts = dcmread(by_name(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert ts == JPEGBaseline8Bit
    # pydicom's SC_rgb_jpeg.dcm is the 15th: Explicit VR announced, Implicit VR written,
    # which DCMTK (storescu's reader) does not accept: left out, with why
    assert len(jpeg) == 14 and "DCMTK" in left_out["SC_rgb_jpeg.dcm"]
    assert "DCMTK" in left_out["explicit_VR-UN.dcm"]  # UIDs in UN: storescu finds none
    assert "JPEG-lossy.dcm" not in picks  # .51, lossy: in neither group
    assert "liver.dcm" not in picks  # SEG


def test_two_files_through_compacs_render_the_tables(tmp_path: Path) -> None:
    require_dcmtk()
    picks = [(by_name(CT), bench.LOSSLESS), (by_name(JPEG_FILE), bench.JPEG)]
    items = bench.build_corpus(tmp_path / "corpus", picks, slices=0, signed=0)
    assert [i.size for i in items] == [
        by_name(CT).stat().st_size,
        by_name(JPEG_FILE).stat().st_size,
    ]

    results = bench.measure(items, tmp_path / "work", orthanc=False)
    text = bench.render(results)

    assert results.default is not None and not results.default.failures
    assert results.exact["default"] == 1  # C-GET in Explicit VR LE, pydicom's decode
    assert results.jpeg_restored["default"] == 1  # frames byte-identical at a .50-only SCP
    ct_row = next(line for line in text.splitlines() if line.startswith("| lossless-able | CT |"))
    cells = [c.strip() for c in ct_row.strip("|").split("|")]
    assert cells[2] == "1" and cells[3] == f"{by_name(CT).stat().st_size:,}"
    assert cells[4] == "n/a"  # no Orthanc in this run
    assert int(cells[5].replace(",", "")) == results.default.sizes[items[0].sop_uid]
    assert "| lossless-able bit-exact over C-GET, default | 1 of 1 held | all held | yes |" in text
    assert "## The corpus, file by file" in text and CT in text and JPEG_FILE in text
