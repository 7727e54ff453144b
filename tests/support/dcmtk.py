"""Driving DCMTK's command-line tools (Debian package dcmtk) from the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2")


def dcmtk_env() -> dict[str, str]:
    """DCMTK tools stall ~40 ms per message on Nagle's algorithm without TCP_NODELAY."""
    return {**os.environ, "TCP_NODELAY": "1"}


def require_dcmtk() -> None:
    if shutil.which("storescu") is None:
        pytest.fail("DCMTK is not installed: run the suite with `make test`, which installs it")


def storescu_profile(path: Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """An association profile (``storescu -xf``) with one presentation context per
    (SOP class, transfer syntax) pair, so every file is sent as it is, without conversion."""
    pairs = list(dict.fromkeys(pairs))
    assert len(pairs) <= 128, "a peer accepts at most 128 presentation contexts"
    syntaxes = list(dict.fromkeys(ts for _, ts in pairs))
    lines = ["[[TransferSyntaxes]]"]
    for n, ts in enumerate(syntaxes):
        lines += [f"[TS{n}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for n, (sop_class, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[OwnSyntaxes]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


def own_syntax_pairs(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of every file that names a SOP class; files without
    File Meta Information get the three uncompressed syntaxes."""
    pairs = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
            sop_class = str(ds.get("SOPClassUID", ""))
        except Exception:
            continue
        if not sop_class:
            continue
        ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
        for syntax in [str(ts)] if ts else UNCOMPRESSED:
            pairs.append((sop_class, syntax))
    return pairs


@dataclass
class StoreOutcome:
    file: str
    outcome: str  # "accepted", "refused", "not sent"
    detail: str


_SENDING = re.compile(r"^I: Sending file: (?P<file>.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((?P<status>.+)\)$")


def storescu(
    port: int,
    paths: Sequence[Path],
    profile: Path,
    *,
    aet: str = "COMPACS",
    calling: str = "STORESCU",
) -> tuple[subprocess.CompletedProcess[str], list[StoreOutcome]]:
    """Send ``paths`` with DCMTK storescu on one association; one outcome per file."""
    require_dcmtk()
    cmd = [
        "storescu",
        "-v",
        "-nh",
        "-aet",
        calling,
        "-aec",
        aet,
        "-xf",
        str(profile),
        "OwnSyntaxes",
        "127.0.0.1",
        str(port),
        *map(str, paths),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=600)
    outcomes: list[StoreOutcome] = []
    current: str | None = None
    pending_detail = ""
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := _SENDING.match(line):
            if current:
                outcomes.append(StoreOutcome(current, "not sent", pending_detail))
            current, pending_detail = Path(m["file"]).name, ""
        elif (m := _RESPONSE.match(line)) and current:
            status = m["status"]
            outcome = "accepted" if status.startswith("Success") else "refused"
            outcomes.append(StoreOutcome(current, outcome, status))
            current = None
        elif line.startswith("E: ") and current:
            pending_detail = (pending_detail + " " + line[3:]).strip()
    if current:
        outcomes.append(StoreOutcome(current, "not sent", pending_detail))
    return proc, outcomes


def findscu_run(node, *options: str, keys: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """DCMTK findscu against ``node`` with ``options`` (model, output flags) and ``-k`` keys;
    fails the test when findscu does."""
    args = ["findscu", *options, "-aec", node.aet]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    return result


def storescu_until(
    port: int, paths: list[Path], successes: int, then: Callable[[], object]
) -> list[Path]:
    """Send ``paths`` with DCMTK storescu; call ``then()`` once ``successes`` files were
    acknowledged; the files that got a Success response."""
    require_dcmtk()
    proc = subprocess.Popen(
        ["storescu", "-v", "-nh", "-aec", "COMPACS", "127.0.0.1", str(port), *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
    )
    acknowledged: list[Path] = []
    sending = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("I: Sending file: "):
            sending = Path(line.removeprefix("I: Sending file: ").strip())
        elif line.startswith("I: Received Store Response (Success") and sending:
            acknowledged.append(sending)
            if len(acknowledged) == successes:
                then()
    proc.wait(60)
    return acknowledged


def dcmdjpls_pixels(ds: Dataset, folder: Path) -> np.ndarray:
    """DCMTK's dcmdjpls decodes a JPEG-LS Part 10 file; pydicom reads its native output."""
    require_dcmtk()
    src, out = folder / f"{ds.SOPInstanceUID}.jls.dcm", folder / f"{ds.SOPInstanceUID}.raw.dcm"
    ds.save_as(src, enforce_file_format=True)
    subprocess.run(["dcmdjpls", str(src), str(out)], check=True, env=dcmtk_env())
    return pydicom.dcmread(out).pixel_array
