"""Independent clients: DCMTK's echoscu and storescu against a real node."""

from __future__ import annotations

import subprocess
from collections import Counter

from compacs.dicom.status import Status
from tests.conftest import ARTIFACTS, dcmtk_env, echo, require_dcmtk
from tests.dcmtk import own_syntax_pairs, storescu, storescu_profile
from tests.dicomfiles import all_files, storage_files
from tests.test_store import EXPECTED_REFUSALS


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
