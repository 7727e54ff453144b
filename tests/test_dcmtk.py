"""Independent clients: DCMTK's echoscu and storescu against a real node."""

from __future__ import annotations

import re
import shlex
import shutil
import sqlite3
import subprocess
from collections import Counter
from contextlib import closing

import numpy as np
from pydicom import dcmread

from compacs.dicom.status import Status
from tests.support.dcmtk import (
    dcmtk_env,
    own_syntax_pairs,
    require_dcmtk,
    storescu,
    storescu_profile,
)
from tests.support.dicomfiles import EXPECTED_REFUSALS, all_files, by_name, storage_files
from tests.support.node import ARTIFACTS, ROOT, echo


def test_echoscu(node):
    require_dcmtk()
    proc = subprocess.run(
        ["echoscu", "-v", "-aec", node.aet, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Received Echo Response (Success)" in proc.stdout + proc.stderr


def test_echoscu_to_the_wrong_called_ae_is_rejected(node):
    require_dcmtk()
    proc = subprocess.run(
        ["echoscu", "-aec", "NOT-COMPACS", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stdout + proc.stderr


# Refusals the node gives to what DCMTK sends, and why (DCMTK takes the SOP Instance UID
# from the data set, so files whose meta disagrees with the data set go through).
DCMTK_REFUSALS = {
    name: status for name, status in EXPECTED_REFUSALS.items() if status != Status.DATASET_MISMATCH
}
DCMTK_CANNOT_READ = ("Bad DICOM file", "No SOP Class or Instance UID")


def test_storescu_sends_every_public_file_in_its_own_syntax(node, tmp_path):
    files = all_files()
    profile = storescu_profile(tmp_path / "own.cfg", own_syntax_pairs(files))
    proc, outcomes = storescu(node.port, files, profile)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(outcomes) == len(files)

    by_outcome = Counter(o.outcome for o in outcomes)
    refused = {o.file: o.detail for o in outcomes if o.outcome == "refused"}
    not_sent = {o.file: o.detail for o in outcomes if o.outcome == "not sent"}
    accepted = {o.file for o in outcomes if o.outcome == "accepted"}

    # every refusal by the node is one of the justified ones, with the expected reason
    assert set(refused) <= set(DCMTK_REFUSALS)
    assert all(d.startswith("Error: CannotUnderstand") for d in refused.values())
    # what was not sent: only files DCMTK cannot read (truncated, not DICOM, or whose
    # UIDs it cannot find); every SOP class was accepted, retired US Image Storage included
    for name, why in not_sent.items():
        assert any(reason in why for reason in DCMTK_CANNOT_READ), (name, why)
    assert {"color-pl.dcm", "color-px.dcm"} <= accepted
    # so every valid storage file DCMTK could read was accepted
    should_pass = {f.name for f in storage_files()} - set(DCMTK_REFUSALS)
    assert should_pass - accepted <= set(not_sent)
    assert len(accepted) >= 190
    assert echo(node.port) == Status.SUCCESS
    stats = node.stats()
    accepted_uids = {f.sop_instance_uid for f in storage_files() if f.name in accepted}
    assert stats["instances"] >= len(accepted_uids) > 120

    ARTIFACTS.mkdir(exist_ok=True)
    lines = [
        f"storescu (DCMTK) sent {len(files)} files from pydicom's test files and pydicom-data",
        f"accepted {by_outcome['accepted']}, refused by compacs {by_outcome['refused']}, "
        f"not sent by storescu {by_outcome['not sent']}; stored instances {stats['instances']} "
        "(several fixtures share a SOP Instance UID)",
        "",
        "refused by compacs:",
        *[f"  {n}: {d}" for n, d in sorted(refused.items())],
        "",
        "not sent by storescu:",
        *[f"  {n}: {d[:110]}" for n, d in sorted(not_sent.items())],
    ]
    (ARTIFACTS / "storescu-summary.txt").write_text("\n".join(lines) + "\n")


# -- the README's first steps ---------------------------------------------------------------
MIXED_FOLDER = {  # one file per syntax, each with its own SOP Instance UID
    "CT_small.dcm": "1.2.840.10008.1.2.1",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "GDCMJ2K_TextGBR.dcm": "1.2.840.10008.1.2.4.90",
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",
}


def readme_storescu_command() -> list[str]:
    """The README's storescu command for sending a folder (its first steps), as argv."""
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"`(storescu [^`]*\+sd some/folder)`", text)
    assert commands, "the README shows no storescu command for a folder"
    return shlex.split(commands[0])


def test_the_readme_storescu_command_sends_a_folder_of_mixed_syntaxes_as_it_is(
    plain_node, tmp_path
):
    """The README's command sends native, JPEG baseline, JPEG-LS, JPEG 2000 and RLE files
    in one run; each is stored in its own syntax and decodes (pydicom) as the original."""
    require_dcmtk()
    node = plain_node
    folder = tmp_path / "some" / "folder"
    folder.mkdir(parents=True)
    originals = {}
    for name, syntax in MIXED_FOLDER.items():
        shutil.copy(by_name(name), folder / name)
        ds = dcmread(folder / name)
        assert ds.file_meta.TransferSyntaxUID == syntax
        originals[str(ds.SOPInstanceUID)] = ds
    assert len(originals) == len(MIXED_FOLDER)

    argv = [
        {"11112": str(node.port), "some/folder": str(folder)}.get(a, a)
        for a in readme_storescu_command()
    ]
    proc = subprocess.run(
        [*argv[:1], "-v", *argv[1:]],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("Received Store Response (Success)") == len(MIXED_FOLDER)

    stats = node.stats()
    assert stats["instances"] == len(MIXED_FOLDER)
    assert sorted(stats["by_transfer_syntax"]) == sorted(MIXED_FOLDER.values())
    with closing(sqlite3.connect(node.data_dir / "index.sqlite")) as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for uid, original in originals.items():
        stored = dcmread(node.data_dir / "store" / keys[uid])
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert np.array_equal(stored.pixel_array, original.pixel_array), uid
