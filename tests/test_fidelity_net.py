"""Fidelity in the network layer (issue 13): the transfer syntax negotiated keeps every VR,
and a destination's warning status means delivered.

Checked with readers compacs did not write: DCMTK's getscu, movescu, storescu, storescp and
dcmdump, and pydicom on the files those tools received.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from compacs.dicom.status import Category, Status, category, done
from compacs.dicom.syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    acceptance_order,
    accepted_for_storage,
)
from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmtk_env, require_dcmtk
from tests.support.destination import Destination
from tests.support.dicomfiles import by_name
from tests.support.node import NO_COMPRESSION, NodeProcess, echo, free_port, write_config
from tests.support.scu import send_datasets

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = SecondaryCaptureImageStorage  # JPEG2000_UNC.dcm
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DCMTK_NAMES = {JPEG_LS: "=JPEGLSLossless", JPEG_BASELINE: "=JPEGBaseline"}
RLE = "1.2.840.10008.1.2.5"
# OBXXXX1A.dcm: private Philips US attributes; JPEG2000_UNC.dcm: private GEMS_GENIE_1 FDs,
# which pydicom's private dictionary lists as SL (so read from Implicit VR they are SL)
PRIVATE = {
    "OBXXXX1A.dcm": {"200d,1013": "US", "200d,1014": "CS"},
    "JPEG2000_UNC.dcm": {"0013,101c": "FD", "0013,101d": "FD"},
}


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


def dcmdump(path: Path, *tags: str) -> str:
    require_dcmtk()
    args = [arg for tag in ("0002,0010", *tags) for arg in ("+P", tag)]
    result = subprocess.run(["dcmdump", *args, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def vrs(dump: str) -> dict[str, set[str]]:
    """{tag: the VRs dcmdump printed for it} (every occurrence, in sequences too)."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^\s*\(([0-9a-f]{4},[0-9a-f]{4})\) (\S\S) ", dump, re.MULTILINE):
        out.setdefault(m[1], set()).add(m[2])
    return out


def assert_private_vrs(path: Path, name: str) -> None:
    """The private elements of ``name`` as dcmdump and pydicom read ``path``: Explicit VR
    Little Endian, each element with its original VR and value."""
    dump = dcmdump(path, *PRIVATE[name])
    assert "=LittleEndianExplicit" in dump, dump
    assert vrs(dump) == {"0002,0010": {"UI"}} | {t: {vr} for t, vr in PRIVATE[name].items()}, dump
    original, received = pydicom.dcmread(by_name(name)), pydicom.dcmread(path)
    for tag in PRIVATE[name]:
        key = int(tag.replace(",", ""), 16)
        want = [(e.VR, e.value) for e in _all(original, key)]
        assert [(e.VR, e.value) for e in _all(received, key)] == want, tag


def _all(ds: Dataset, tag: int) -> list:
    found: list = []
    ds.walk(lambda _, elem: found.append(elem) if elem.tag == tag else None)
    return found


def store_with_pynetdicom_defaults(port: int, names: list[str]) -> dict[str, str]:
    """C-STORE ``names`` from an SCU proposing pynetdicom's default contexts (Implicit VR
    first in each); {name: the transfer syntax the node accepted for it}."""
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title="COMPACS")
    assert assoc.is_established
    accepted = {}
    try:
        for name in names:
            ds = pydicom.dcmread(by_name(name))
            (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
            accepted[name] = str(cx.transfer_syntax[0])
            assert assoc.send_c_store(ds).Status == Status.SUCCESS
    finally:
        assoc.release()
    return accepted


def study_identifier(name: str) -> list[str]:
    study = pydicom.dcmread(by_name(name), stop_before_pixels=True).StudyInstanceUID
    return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]


# -- D. Explicit VR first --------------------------------------------------------------
def test_acceptance_order_explicit_first_the_requestors_compressed_syntax_before_it():
    """PS3.8 9.3.3.2: the acceptor picks; compacs picks Explicit over Implicit, keeps the
    requestor's own compressed syntax, and never a lossy one it did not list first."""
    pynetdicom_default = [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED]
    assert acceptance_order([pynetdicom_default])[0] == EXPLICIT_VR_LITTLE_ENDIAN
    assert acceptance_order([pynetdicom_default])[-1] == IMPLICIT_VR_LITTLE_ENDIAN
    assert acceptance_order([[IMPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE]])[0] != JPEG_BASELINE
    assert acceptance_order([[JPEG_LS, EXPLICIT_VR_LITTLE_ENDIAN]])[0] == JPEG_LS
    assert acceptance_order([[JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN]])[0] == JPEG_BASELINE
    # a lossy syntax listed after a native one, in this context or another, comes after
    assert acceptance_order([[EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE]])[0] != JPEG_BASELINE
    order = acceptance_order([[JPEG_BASELINE], [IMPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE]])
    assert order.index(IMPLICIT_VR_LITTLE_ENDIAN) < order.index(JPEG_BASELINE)
    # other lossless syntaxes in the requestor's order, before lossy ones
    order = acceptance_order([[IMPLICIT_VR_LITTLE_ENDIAN, JPEG_LS_NEAR, BIG_ENDIAN, RLE]])
    assert order == [BIG_ENDIAN, RLE, IMPLICIT_VR_LITTLE_ENDIAN, JPEG_LS_NEAR]
    node = accepted_for_storage()
    assert node[0] == EXPLICIT_VR_LITTLE_ENDIAN
    assert node.index(IMPLICIT_VR_LITTLE_ENDIAN) < node.index(JPEG_BASELINE)


def test_implicit_first_proposals_get_explicit_and_private_vrs_survive_c_get(plain_node, tmp_path):
    """pynetdicom's default contexts (Implicit VR first) store; DCMTK getscu and a pynetdicom
    C-GET proposing Implicit VR first retrieve: dcmdump and pydicom find every private
    element with its VR (before: UN, and SL for the FDs pydicom's dictionary calls SL)."""
    require_dcmtk()
    names = list(PRIVATE)
    accepted = store_with_pynetdicom_defaults(plain_node.port, names)
    print(f"\naccepted for C-STORE: {accepted}")
    assert accepted == dict.fromkeys(names, EXPLICIT_VR_LITTLE_ENDIAN)

    for name in names:
        folder = tmp_path / f"getscu-{name}"
        folder.mkdir()
        command = ["getscu", "-S", "-aec", plain_node.aet, "-od", str(folder)]
        command += [*study_identifier(name), "127.0.0.1", str(plain_node.port)]
        result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env())
        assert result.returncode == 0, result.stderr[-1500:]
        (received,) = folder.iterdir()
        print(dcmdump(received, *PRIVATE[name]))
        assert_private_vrs(received, name)

    # the node is the acceptor of the C-GET's storage contexts too: Implicit proposed first
    got: dict[str, Path] = {}

    def on_store(event):
        path = tmp_path / f"pynetdicom-get-{len(got)}.dcm"
        path.write_bytes(event.encoded_dataset())  # as received, with its transfer syntax
        got[str(event.request.AffectedSOPInstanceUID)] = path
        return Status.SUCCESS

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    implicit_first = [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN]
    sop_classes = [US_IMAGE, SC_IMAGE]
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, implicit_first)
    assoc = ae.associate(
        "127.0.0.1",
        plain_node.port,
        ae_title=plain_node.aet,
        ext_neg=[build_role(uid, scp_role=True) for uid in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        storage = {str(c.abstract_syntax): c.transfer_syntax[0] for c in assoc.accepted_contexts}
        assert storage[US_IMAGE] == storage[SC_IMAGE] == EXPLICIT_VR_LITTLE_ENDIAN
        for name in names:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = pydicom.dcmread(by_name(name)).StudyInstanceUID
            responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            assert [s.Status for s, _ in responses][-1] == Status.SUCCESS
    finally:
        assoc.release()
    for name in names:
        uid = str(pydicom.dcmread(by_name(name), stop_before_pixels=True).SOPInstanceUID)
        assert_private_vrs(got[uid], name)


def test_storescu_proposing_jpeg_ls_then_explicit_keeps_jpeg_ls(plain_node, tmp_path):
    """DCMTK storescu proposes [JPEG-LS, Explicit VR LE] in one context: the node accepts
    the modality's own JPEG-LS, sent without a transcode (before: Explicit, which made
    storescu decompress it). Likewise a JPEG Baseline file proposed [JPEG Baseline,
    Explicit]: a lossy syntax the requestor listed first."""
    require_dcmtk()
    files = {JPEG_LS: by_name("MR_small_jpeg_ls_lossless.dcm")}
    files[JPEG_BASELINE] = by_name("SC_rgb_jpeg_dcmtk.dcm")  # lossy, listed first: kept
    for syntax, path in files.items():
        sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
        profile = tmp_path / f"{syntax}.cfg"
        profile.write_text(
            "[[TransferSyntaxes]]\n[Own]\n"
            f"TransferSyntax1 = {syntax}\nTransferSyntax2 = {EXPLICIT_VR_LITTLE_ENDIAN}\n"
            f"[[PresentationContexts]]\n[Contexts]\nPresentationContext1 = {sop_class}\\Own\n"
            "[[Profiles]]\n[OwnFirst]\nPresentationContexts = Contexts\n"
        )
        command = ["storescu", "-d", "-aec", plain_node.aet, "-xf", str(profile), "OwnFirst"]
        command += ["127.0.0.1", str(plain_node.port), str(path)]
        result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env())
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-1500:]
        accepted = re.findall(r"Accepted Transfer Syntax: (.+)", log)
        converted = re.findall(r"Converting transfer syntax: (.+) -> (.+)", log)
        print(f"\nstorescu {path.name}: accepted {accepted}, converted {converted}")
        assert accepted == [DCMTK_NAMES[syntax]], log[-3000:]
        assert all(source == target for source, target in converted), converted
    stats = plain_node.stats()["by_transfer_syntax"]
    assert set(stats) == {JPEG_LS, JPEG_BASELINE}, stats


def test_c_move_to_a_destination_preferring_implicit_gets_explicit(node_factory, tmp_path):
    """DCMTK storescp accepting [Implicit, Explicit] in that order (as the node itself did)
    as the C-MOVE destination of DCMTK movescu: the node offers Explicit on a context of its
    own and sends in it; the received file keeps its private VRs."""
    require_dcmtk()
    folder, port = tmp_path / "received", free_port()
    folder.mkdir()
    profile = tmp_path / "implicit-first.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[ImplicitFirst]\n"
        f"TransferSyntax1 = {IMPLICIT_VR_LITTLE_ENDIAN}\n"
        f"TransferSyntax2 = {EXPLICIT_VR_LITTLE_ENDIAN}\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        "PresentationContext1 = 1.2.840.10008.1.1\\ImplicitFirst\n"
        f"PresentationContext2 = {US_IMAGE}\\ImplicitFirst\n"
        f"PresentationContext3 = {SC_IMAGE}\\ImplicitFirst\n"
        "[[Profiles]]\n[ImplicitFirst]\nPresentationContexts = Contexts\n"
    )
    command = ["storescp", "-aet", "IMPLICIT", "-xf", str(profile), "ImplicitFirst"]
    scp = subprocess.Popen(
        [*command, "-od", str(folder), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: echo(port, "IMPLICIT", timeout=2) == Status.SUCCESS, 20, "storescp")
        node = node_factory(
            config=write_config(tmp_path / "plain.toml", NO_COMPRESSION),
            extra_args=("--peer", f"IMPLICIT@127.0.0.1:{port}"),
        )
        store_with_pynetdicom_defaults(node.port, list(PRIVATE))
        for name in PRIVATE:
            command = ["movescu", "-S", "-aec", node.aet, "-aem", "IMPLICIT"]
            command += [*study_identifier(name), "127.0.0.1", str(node.port)]
            result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env())
            assert result.returncode == 0, result.stderr[-1500:]
        wait_for(lambda: len(list(folder.iterdir())) == len(PRIVATE), 30, "moved files")
    finally:
        scp.terminate()
        scp.wait(10)
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in folder.iterdir()}
    for name in PRIVATE:
        uid = str(pydicom.dcmread(by_name(name), stop_before_pixels=True).SOPInstanceUID)
        print(dcmdump(received[uid], *PRIVATE[name]))
        assert_private_vrs(received[uid], name)


# -- H. One status table; warnings are delivered ----------------------------------------
def test_category_over_the_status_table():
    """PS3.7 C.1.2 for every code in the table and for codes not in it."""
    expected = {
        Category.SUCCESS: {0x0000},
        Category.WARNING: {0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007},
        Category.CANCEL: {0xFE00},
        Category.PENDING: {0xFF00, 0xFF01},
    }
    for status in Status:
        want = next((c for c, codes in expected.items() if status in codes), Category.FAILURE)
        assert category(status) is want, f"{status.name} 0x{status:04X}"
        assert status.meaning and status.section.startswith("PS3.")
    for code in (0xB001, 0xB123, 0xBFFF):
        assert category(code) is Category.WARNING and done(code)
    for code in (0x0002, 0x0105, 0x0211, 0xA123, 0xA7FF, 0xC211, 0xCFFF, 0xAFFF, 0xFE01, -1):
        assert category(code) is Category.FAILURE and not done(code), hex(code)
    assert not done(0xFF00) and not done(0xFE00)
    assert len({s.value for s in Status}) == len(Status)  # one row per code


class WarningDestination(Destination):
    """Stores every instance and answers with the next of ``answers`` (PS3.4 B.2.3: a
    warning status means the instance is stored)."""

    def __init__(self, answers: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.answers = answers

    def _on_store(self, event) -> int:
        super()._on_store(event)
        with self._lock:
            return self.answers[(len(self.arrivals) - 1) % len(self.answers)]


def queue(node: NodeProcess) -> list[dict]:
    result = node.cli("queue", "list", "--json", "--all")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_forwarding_to_a_destination_answering_warnings_delivers_once(node_factory, tmp_path):
    """The destination answers 0x0001 then 0xB123 (both warnings, PS3.7 C.1.2): each
    instance arrives once and its forward item is done after one attempt (before: retried,
    parked as failed, and received three times)."""
    series = list(ct_series(2, 32, 32, seed=1313, patient_id="WARN"))
    retries = "[forwarding]\nretry_delay = 0.2\nretry_max_delay = 0.5\nmax_attempts = 3\n"
    with WarningDestination([Status.WARNING, 0xB123], aet="WARNDEST") as dest:
        node = node_factory(
            config=write_config(tmp_path / "fwd.toml", retries),
            extra_args=("--forward", dest.address),
        )
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 2
        wait_for(
            lambda: (
                len(queue(node)) == 2 and all(i["state"] in ("done", "failed") for i in queue(node))
            ),
            what="every forward item done or parked",
        )
        arrivals = Counter(dest.uids())
    items = queue(node)
    print(f"\nreceived per instance: {dict(arrivals)}")
    print("items: " + ", ".join(f"{i['state']} after {i['attempts']}" for i in items))
    assert arrivals == Counter(str(ds.SOPInstanceUID) for ds in series)
    assert [(i["state"], i["attempts"]) for i in items] == [("done", 1)] * 2
