"""The admin's window: REST API, previews, downloads, auth and the pages in a real browser.

One node (over TCP, compression on) holds public CT, MR, US (palette and YBR JPEG) and RGB
files plus generated CT studies; the tests read it through HTTP as an admin would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from html import escape
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import evt

from compacs.activity import Activity
from compacs.synthetic import UID_ROOT, ct_series
from tests.support.dcmtk import own_syntax_pairs, storescu, storescu_profile
from tests.support.dicomfiles import by_name, storage_files
from tests.support.node import ARTIFACTS, NodeProcess, free_port, run_cli, write_config
from tests.support.scu import send_datasets, send_files

PUBLIC = (
    "CT_small.dcm",  # CT, MONOCHROME2, signed 16 bits
    "MR_small.dcm",  # MR
    "OBXXXX1A_2frame.dcm",  # US, PALETTE COLOR, 2 frames
    "examples_ybr_color.dcm",  # US, YBR_FULL_422 JPEG baseline (kept: lossy)
    "SC_rgb_2frame.dcm",  # RGB, 2 frames
)
# Generated studies for search semantics: (patient ID, name, study date)
PATIENTS = (
    ("WEB-A", "DOE^JOHN", "20200315"),
    ("WEB-B", "Doe^Jane", "20201231"),
    ("WEB-C", "DOELING^MAX", "20210105"),
    ("WEB-D", "ADOE^ZOE", "20200601"),
)


class Http:
    def __init__(self, port: int, auth: str | None = None) -> None:
        self.base, self.auth = f"http://127.0.0.1:{port}", auth

    def get(self, path: str, auth: str | None = None) -> tuple[int, Message, bytes]:
        """Status, headers (names case-insensitive, RFC 9110 5.1) and body."""
        request = urllib.request.Request(self.base + path)
        if auth or self.auth:
            request.add_header("Authorization", auth or self.auth)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


def _series(pid: str, name: str, date: str, n: int = 4, size: int = 64):
    out = []
    for ds in ct_series(n, size, size, patient_id=pid, patient_name=name):
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        out.append(ds)
    return out


def _monochrome1_twin(path: Path):
    """CT_small as MONOCHROME1 under new UIDs: its preview must be the inverse."""
    ds = dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(UID_ROOT))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "WEB-M1", "Mono^One"
    return ds


def _real_study() -> list:
    """Real CT, MR and US images (pydicom's public files) as the series of one study, under
    new UIDs: the study page's thumbnails are of real images."""
    study = generate_uid(UID_ROOT)
    out = []
    for n, name in enumerate(("CT_small.dcm", "MR_small.dcm", "examples_ybr_color.dcm")):
        ds = dcmread(by_name(name))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(UID_ROOT)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_ROOT)
        ds.SeriesNumber = n + 1
        ds.PatientID, ds.PatientName = "WEB-R", "Real^Images"
        ds.StudyDescription = "REAL CT MR US"
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A running node holding the public files and the generated studies, compressed."""
    tmp = tmp_path_factory.mktemp("web")
    http_port = free_port()
    node = NodeProcess(tmp / "data", extra_args=("--http-port", str(http_port)))
    node.start()
    try:
        files = {f.name: f for f in storage_files()}
        assert send_files(node.port, [files[n] for n in PUBLIC]) == [0] * len(PUBLIC)
        generated = [ds for p in PATIENTS for ds in _series(*p)]
        generated += _series("WEB-S", "Synthetic^Series", "20260115", n=12, size=128)
        generated.append(_monochrome1_twin(by_name("CT_small.dcm")))
        generated += _real_study()
        assert set(send_datasets(node.port, generated)) == {0}
        http = Http(http_port)
        deadline = time.monotonic() + 60
        while http.json("/api/stats")["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.json("/api/stats")["pending"] == 0
        yield node, http
    finally:
        node.stop()


def _sop(http: Http, **keys: str) -> dict:
    query = "&".join(f"{k}={v}" for k, v in keys.items())
    items = http.json(f"/api/instances?{query}")["items"]
    assert len(items) == 1, items
    return items[0]


def _png(body: bytes) -> np.ndarray:
    return imagecodecs.png_decode(body)


# -- search -------------------------------------------------------------------------------
def test_study_search_uses_cfind_wildcards_ranges_and_pn_case(archive):
    _, http = archive
    found = http.json("/api/studies?PatientName=DOE*")["items"]
    # PN matching ignores case (default), '*' is a wildcard anchored at the start
    assert sorted(s["PatientID"] for s in found) == ["WEB-A", "WEB-B", "WEB-C"]
    in_2020 = http.json("/api/studies?StudyDate=20200101-20201231&PatientID=WEB-*")["items"]
    assert sorted(s["PatientID"] for s in in_2020) == ["WEB-A", "WEB-B", "WEB-D"]
    both = http.json("/api/studies?PatientName=DOE*&StudyDate=20200101-20201231")["items"]
    assert sorted(s["PatientID"] for s in both) == ["WEB-A", "WEB-B"]
    open_range = http.json("/api/studies?StudyDate=20210101-&PatientID=WEB-?")["items"]
    assert [s["PatientID"] for s in open_range] == ["WEB-C", "WEB-S"]
    # single-value matching is exact and case-sensitive outside PN (PS3.4 C.2.2.2.1)
    assert http.json("/api/studies?PatientID=web-a")["items"] == []
    study = http.json("/api/studies?PatientID=WEB-A")["items"][0]
    assert study["ModalitiesInStudy"] == "CT" and study["NumberOfStudyRelatedInstances"] == 4
    assert [s["PatientID"] for s in http.json("/api/studies?ModalitiesInStudy=MR")["items"]] == [
        "4MR1",
        "WEB-R",  # the real CT/MR/US study
    ]
    patients = http.json("/api/patients?PatientName=doe^j*")["items"]
    assert sorted(p["PatientID"] for p in patients) == ["WEB-A", "WEB-B"]


def test_search_errors_name_the_parameter(archive):
    _, http = archive
    status, _, body = http.get("/api/studies?Modality=CT")
    assert status == 400 and "Modality" in json.loads(body)["error"]
    status, _, body = http.get("/api/studies?StudyDate=2020-2021")
    assert status == 400 and "StudyDate" in json.loads(body)["error"]
    status, _, body = http.get("/api/studies?limit=0")
    assert status == 400 and "limit" in json.loads(body)["error"]
    assert http.get("/api/studies/1.2.3.4")[0] == 404
    assert http.get("/api/nothing")[0] == 404


def test_paging_covers_every_study_once(archive):
    _, http = archive
    everything = http.json("/api/studies?limit=1000")
    assert not everything["more"]
    uids = [s["StudyInstanceUID"] for s in everything["items"]]
    assert len(uids) == len(PUBLIC) + len(PATIENTS) + 3  # + synthetic, MONOCHROME1, real study
    paged, offset = [], 0
    while True:
        page = http.json(f"/api/studies?limit=3&offset={offset}")
        paged += [s["StudyInstanceUID"] for s in page["items"]]
        if not page["more"]:
            break
        assert len(page["items"]) == 3
        offset += 3
    assert paged == uids


# -- details --------------------------------------------------------------------------------
def test_instance_detail_has_attributes_syntaxes_sizes_and_ratio(archive):
    _, http = archive
    ct = dcmread(by_name("CT_small.dcm"), stop_before_pixels=True)
    doc = http.json(f"/api/instances/{ct.SOPInstanceUID}")
    assert doc["PatientID"] == ct.PatientID and doc["Modality"] == "CT"
    assert doc["Rows"] == 128 and doc["StudyInstanceUID"] == ct.StudyInstanceUID
    assert doc["transfer_syntax_received"] == {
        "uid": "1.2.840.10008.1.2.1",
        "name": "Explicit VR Little Endian",
    }
    assert doc["transfer_syntax_stored"] == {
        "uid": "1.2.840.10008.1.2.4.80",
        "name": "JPEG-LS Lossless",
    }
    assert doc["bytes_received"] > doc["bytes_stored"] > 0
    assert doc["ratio"] == round(doc["bytes_received"] / doc["bytes_stored"], 3)
    assert doc["calling_ae"] == "STORESCU"
    jpeg = dcmread(by_name("examples_ybr_color.dcm"), stop_before_pixels=True)
    kept = http.json(f"/api/instances/{jpeg.SOPInstanceUID}")
    assert kept["transfer_syntax_received"]["uid"] == "1.2.840.10008.1.2.4.50"
    assert kept["transfer_syntax_stored"] == {  # the same JPEG, recompressed (PS3.5 8.2.15)
        "uid": "1.2.840.10008.1.2.4.111",
        "name": "JPEG XL JPEG Recompression",
    }

    study = http.json(
        "/api/studies/" + http.json("/api/studies?PatientID=WEB-S")["items"][0]["StudyInstanceUID"]
    )
    (series,) = study["series"]
    assert [i["InstanceNumber"] for i in series["instances"]] == [str(n) for n in range(1, 13)]
    sizes = study["sizes"]
    assert sizes["instances"] == 12 and sizes["bytes_received"] > sizes["bytes_stored"]
    assert list(sizes["by_transfer_syntax"]) == ["1.2.840.10008.1.2.4.80"]
    one = http.json(f"/api/series/{series['SeriesInstanceUID']}")
    assert one["sizes"] == sizes and len(one["instances"]) == 12
    patient = http.json("/api/patients/WEB-S")
    assert [s["StudyInstanceUID"] for s in patient["studies"]] == [study["StudyInstanceUID"]]


# -- previews -------------------------------------------------------------------------------
def test_preview_sizes_frames_and_colour(archive):
    _, http = archive
    cases = {
        "CT_small.dcm": (128, 128),
        "MR_small.dcm": (64, 64),
        "OBXXXX1A_2frame.dcm": (600, 800, 3),
        "examples_ybr_color.dcm": (240, 320, 3),
        "SC_rgb_2frame.dcm": (100, 100, 3),
    }
    for name, shape in cases.items():
        uid = dcmread(by_name(name), stop_before_pixels=True).SOPInstanceUID
        status, headers, body = http.get(f"/api/instances/{uid}/preview.png")
        assert status == 200 and headers["Content-Type"] == "image/png", name
        assert _png(body).shape == shape, name
    # thumbnails keep the aspect ratio; frames are 1-based
    palette = dcmread(by_name("OBXXXX1A_2frame.dcm"))
    thumb = _png(http.get(f"/api/instances/{palette.SOPInstanceUID}/preview.png?size=128")[2])
    assert thumb.shape == (96, 128, 3)
    second = _png(http.get(f"/api/instances/{palette.SOPInstanceUID}/preview.png?frame=2")[2])
    first = _png(http.get(f"/api/instances/{palette.SOPInstanceUID}/preview.png?frame=1")[2])
    assert not np.array_equal(first, second)
    assert http.get(f"/api/instances/{palette.SOPInstanceUID}/preview.png?frame=3")[0] == 422
    # palette colour: the LUT applied (pydicom's rendering, 16-bit entries to 8 bits)
    expected = palette.pixel_array[1]  # pydicom applies nothing for PALETTE COLOR
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(expected, palette)
    assert np.array_equal(second, (rgb >> 8).astype(np.uint8) if rgb.dtype != np.uint8 else rgb)
    # YBR JPEG: converted to RGB as pydicom does
    ybr = dcmread(by_name("examples_ybr_color.dcm"))
    shown = _png(http.get(f"/api/instances/{ybr.SOPInstanceUID}/preview.png")[2])
    assert np.abs(shown.astype(int) - ybr.pixel_array[0].astype(int)).max() <= 1
    rgb_file = dcmread(by_name("SC_rgb_2frame.dcm"))
    shown = _png(http.get(f"/api/instances/{rgb_file.SOPInstanceUID}/preview.png?frame=2")[2])
    assert np.array_equal(shown, rgb_file.pixel_array[1])


def test_preview_window_and_monochrome1_inversion(archive):
    _, http = archive
    ct = dcmread(by_name("CT_small.dcm"))
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    c, w = 40.0, 400.0
    expected = np.clip(np.rint(((hu - (c - 0.5)) / (w - 1) + 0.5) * 255), 0, 255)
    shown = _png(http.get(f"/api/instances/{ct.SOPInstanceUID}/preview.png?wc=40&ww=400")[2])
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1
    twin = _sop(http, PatientID="WEB-M1")
    assert twin["PhotometricInterpretation"] == "MONOCHROME1"
    for query in ("", "?wc=40&ww=400"):
        mono2 = _png(http.get(f"/api/instances/{ct.SOPInstanceUID}/preview.png{query}")[2])
        mono1 = _png(http.get(f"/api/instances/{twin['SOPInstanceUID']}/preview.png{query}")[2])
        assert np.array_equal(mono1, 255 - mono2)
    assert http.get(f"/api/instances/{ct.SOPInstanceUID}/preview.png?wc=40")[0] == 400


# -- downloads -------------------------------------------------------------------------------
def test_download_as_stored_is_the_stored_object(archive):
    node, http = archive
    for name in ("CT_small.dcm", "OBXXXX1A_2frame.dcm"):
        uid = dcmread(by_name(name), stop_before_pixels=True).SOPInstanceUID
        status, headers, body = http.get(f"/api/instances/{uid}/file")
        assert status == 200 and headers["Content-Type"] == "application/dicom"
        (stored,) = list((node.data_dir / "store").rglob(f"{uid}.*.dcm"))
        assert body == stored.read_bytes()
        assert hashlib.sha256(body).hexdigest() == http.json(f"/api/instances/{uid}")["sha256"]


@pytest.mark.parametrize(
    "target", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"]
)
def test_transcoded_download_decodes_bit_exact(archive, target):
    _, http = archive
    for name in ("CT_small.dcm", "OBXXXX1A_2frame.dcm"):
        original = dcmread(by_name(name))
        path = f"/api/instances/{original.SOPInstanceUID}/file?transfer_syntax={target}"
        status, _, body = http.get(path)
        assert status == 200, body[:200]
        got = dcmread(BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == target
        assert np.array_equal(got.pixel_array, original.pixel_array), (name, target)
    status, _, body = http.get(path.split("?")[0] + "?transfer_syntax=1.2.840.10008.1.2.4.50")
    assert status == 400 and "lossy" in json.loads(body)["error"]


# -- stats -------------------------------------------------------------------------------------
def test_stats_equal_the_command_line_and_show_activity(archive):
    node, http = archive

    # the node records an association's end once its A-RELEASE-RP is queued (pynetdicom's
    # EVT_RELEASED): the sender may have gone a moment before, and its close reported
    # first ("closed" until the release is); seen under full-suite load
    def unsettled(a: dict) -> bool:
        return a["status"] == "open" or (a["status"] == "closed" and "C-STORE" in a["operations"])

    deadline = time.monotonic() + 10
    while any(unsettled(a) for a in http.json("/api/stats")["associations"]):
        assert time.monotonic() < deadline, "a store association is not recorded as released"
        time.sleep(0.05)
    api = http.json("/api/stats")
    cli = node.stats()
    assert {k: api[k] for k in cli} == cli
    assert api["compression_queue"] == cli["pending"] == 0
    total = sum(d["bytes_received"] for d in api["per_day"])
    assert total == cli["bytes_received"]
    assert sum(d["instances"] for d in api["per_day"]) == cli["instances"]
    stores = [a for a in api["associations"] if a["operations"].get("C-STORE")]
    assert sum(a["operations"]["C-STORE"] for a in stores) == cli["instances"]
    assert {a["calling_ae"] for a in stores} == {"STORESCU"}
    assert all(a["status"] == "released" for a in stores), [a["status"] for a in stores]
    openapi = http.json("/api/openapi.json")
    assert (
        openapi["openapi"].startswith("3.")
        and "/api/instances/{uid}/preview.png" in openapi["paths"]
    )


def test_a_failed_store_is_a_recent_error(archive):
    node, http = archive
    from tests.support.scu import send_raw

    bad = send_raw(
        node.port, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", b"\x08"
    )
    assert int(bad.Status) >= 0xA000
    errors = http.json("/api/stats")["errors"]
    assert any(e.get("operation") == "C-STORE" and e["status"].startswith("0x") for e in errors)


def _deflated_over(path: Path, limit: int) -> Path:
    """A Deflated Explicit VR LE file of a few kB that inflates to more than ``limit``."""
    (ds,) = ct_series(1, 256, 256, seed=77, patient_id="WEB-BIG")
    ds.PixelData = bytes(256 * 256 * 2)  # zeros: deflate makes them almost nothing
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < limit // 4 and limit < 256 * 256 * 2
    return path


def test_a_refused_store_is_one_recent_error_with_status_comment_and_ae(tmp_path):
    """DCMTK storescu sends a deflated object over [ingest] max_object_size: the dashboard
    and the API list the refusal once (the response's status and Error Comment, and the
    calling AE), not once more as the log line written while refusing it."""
    http_port = free_port()
    config = write_config(tmp_path / "small.toml", "[ingest]\nmax_object_size = 65536\n")
    node = NodeProcess(tmp_path / "data", config=config, extra_args=("--http-port", str(http_port)))
    node.start()
    try:
        big = _deflated_over(tmp_path / "big.dcm", 65536)
        profile = storescu_profile(tmp_path / "p.cfg", own_syntax_pairs([big]))
        _, outcomes = storescu(node.port, [big], profile, calling="MODALITY1")
        assert [o.outcome for o in outcomes] == ["refused"], outcomes
        assert "OutOfResources" in outcomes[0].detail  # 0xA7xx
        reason = "inflates to more than 65536 bytes"
        http = Http(http_port)
        errors = [e for e in http.json("/api/stats")["errors"] if reason in e["message"]]
        assert len(errors) == 1, errors
        (error,) = errors
        assert error["status"] == "0xA700" and error["operation"] == "C-STORE"
        assert error["calling_ae"] == "MODALITY1"
        status, _, body = http.get("/")
        assert status == 200
        html = body.decode()
        assert html.count(reason) == 1, html[html.find("Recent errors") :]
        row = html[html.rfind("<tr>", 0, html.find(reason)) : html.find(reason)]
        assert "MODALITY1" in row and "0xA700" in row and "C-STORE" in row
        assert node.stats()["instances"] == 0
    finally:
        node.stop()


class _Association(threading.Thread):
    """Stands in for pynetdicom's Association (a thread) in Activity's notifications."""

    requestor = SimpleNamespace(ae_title="MODALITY2", address="127.0.0.1")


def _rsp(status: int, comment: str = "") -> object:
    command = Dataset()
    command.Status = status
    if comment:
        command.ErrorComment = comment
    return type("C_STORE_RSP", (), {"command_set": command})()


def test_a_log_line_of_a_request_that_succeeds_stays_a_recent_error():
    """Only a failure response absorbs the log lines its association wrote; a warning
    logged while answering a request that succeeds, or one logged outside any association,
    stays one entry of its own."""
    activity = Activity()
    sent = dict(activity.handlers())[evt.EVT_DIMSE_SENT]  # as pynetdicom calls it
    handler = activity.log_handler()
    log = logging.getLogger("compacs.test_activity")
    log.addHandler(handler)
    try:
        assoc = _Association()

        def run() -> None:
            event = SimpleNamespace(assoc=assoc)
            activity._established(event)
            log.warning("refused for a reason")
            sent(SimpleNamespace(assoc=assoc, message=_rsp(0xA700, "a reason")))
            log.warning("compression at ingest failed; stays queued")
            sent(SimpleNamespace(assoc=assoc, message=_rsp(0x0000)))

        assoc.run = run
        assoc.start()
        assoc.join(10)
        log.warning("outside any association")
    finally:
        log.removeHandler(handler)
    errors = [(e["source"], e["status"], e["message"]) for e in activity.errors()][::-1]
    assert errors == [
        ("dimse", "0xA700", "a reason"),
        ("log", "WARNING", "compression at ingest failed; stays queued"),
        ("log", "WARNING", "outside any association"),
    ]
    assert activity.errors()[1]["calling_ae"] == "MODALITY2"


def test_an_association_released_is_recorded_released_whichever_thread_reports_first():
    """pynetdicom reports a release from the association's thread (EVT_RELEASED, after
    queueing the A-RELEASE-RP) and the peer's close from the DUL's (EVT_CONN_CLOSE, in
    Sta13 once the RP is sent): the close may come first (seen under load). A close in
    any other state (the peer went away) stays "closed"."""
    activity = Activity()
    handlers = dict(activity.handlers())

    def ended(first: tuple, then: tuple | None, state: str) -> str:
        assoc = _Association()
        assoc.dul = SimpleNamespace(state_machine=SimpleNamespace(current_state=state))
        activity._established(SimpleNamespace(assoc=assoc))
        for report in (first, then):
            if report is not None:
                handlers[report[0]](SimpleNamespace(assoc=assoc))
        return activity.associations(1)[0]["status"]  # the newest

    close, released, aborted = (evt.EVT_CONN_CLOSE,), (evt.EVT_RELEASED,), (evt.EVT_ABORTED,)
    assert ended(close, released, "Sta13") == "released"
    assert ended(released, close, "Sta13") == "released"
    assert ended(close, aborted, "Sta13") == "aborted"
    assert ended(close, None, "Sta6") == "closed"  # no release: the peer's connection went
    assert ended(close, released, "Sta6") == "closed"  # a late event cannot rewrite it


def _noise_ct(path: Path) -> Path:
    """A CT slice of full-range 16-bit noise: no lossless encoding makes it smaller."""
    (ds,) = ct_series(1, 64, 64, seed=78, patient_id="WEB-STATE")
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    noise = np.random.default_rng(7).integers(0, 65536, size=(64, 64), dtype=np.uint16)
    ds.PixelData = noise.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_compression_state_and_note_on_the_instance_page_api_and_stats(tmp_path):
    """DCMTK storescu sends a compressible CT, full-range noise (JPEG-LS is not smaller),
    a 12-bit JPEG extended (lossy input JPEG XL cannot recompress) and a SEG (Bits
    Allocated 1); once the workers are done,
    each instance's state and note are on its page (escaped) and in its JSON, and
    `compacs stats` counts the instances stored as received by reason. pydicom reads the
    stored objects back: the kept ones are the bytes sent, the compressed one decodes to
    the pixels sent."""
    http_port = free_port()
    node = NodeProcess(tmp_path / "data", extra_args=("--http-port", str(http_port)))
    node.start()
    try:
        (ct,) = ct_series(1, 64, 64, seed=79, patient_id="WEB-STATE")
        ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
        files = {
            "ct": tmp_path / "ct.dcm",
            "noise": _noise_ct(tmp_path / "noise.dcm"),
            "jpeg": by_name("JPEG-lossy.dcm"),
            "seg": by_name("liver.dcm"),
        }
        profile = storescu_profile(tmp_path / "p.cfg", own_syntax_pairs(list(files.values())))
        _, outcomes = storescu(node.port, list(files.values()), profile)
        assert [o.outcome for o in outcomes] == ["accepted"] * 4, outcomes
        http = Http(http_port)
        deadline = time.monotonic() + 60
        while http.json("/api/stats")["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = {k: dcmread(f) for k, f in files.items()}
        uids = {k: str(ds.SOPInstanceUID) for k, ds in sent.items()}
        docs = {k: http.json(f"/api/instances/{uid}")["compression"] for k, uid in uids.items()}

        assert docs["ct"] == {"state": "compressed", "note": "jpeg-ls", "reason": None}
        assert docs["noise"]["state"] == "kept" and docs["noise"]["reason"] == "not smaller"
        assert re.fullmatch(r"jpeg-ls gave \d+ bytes, not smaller", docs["noise"]["note"])
        assert docs["jpeg"] == {
            "state": "untouched",
            "note": "lossy input kept",
            "reason": "lossy input kept",
        }
        seg = "not compressible: Bits Allocated 1"
        assert docs["seg"] == {"state": "untouched", "note": seg, "reason": seg}
        for key in ("noise", "jpeg", "seg"):
            status, _, body = http.get(f"/instances/{uids[key]}")
            assert status == 200
            html = body.decode()
            assert f"<td>{escape(docs[key]['note'])}</td>" in html, key
            assert f"<td>{escape(docs[key]['state'])}</td>" in html, key

        want = {"not smaller": 1, "lossy input kept": 1, seg: 1}
        assert node.stats()["untouched_by_reason"] == want
        assert http.json("/api/stats")["untouched_by_reason"] == want
        lines = node.cli("stats").stdout.splitlines()
        at = lines.index("stored as received, by reason:")
        counted = {}
        for line in lines[at + 1 : at + 1 + len(want)]:
            n, reason = line.split(maxsplit=1)
            counted[reason] = int(n)
        assert counted == want

        for key in ("noise", "jpeg", "seg"):  # stored as sent, byte for byte
            status, _, body = http.get(f"/api/instances/{uids[key]}/file")
            stored = dcmread(BytesIO(body))
            assert stored.file_meta.TransferSyntaxUID == sent[key].file_meta.TransferSyntaxUID
            assert stored.PixelData == sent[key].PixelData
        status, _, body = http.get(f"/api/instances/{uids['ct']}/file")
        stored = dcmread(BytesIO(body))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        assert np.array_equal(stored.pixel_array, sent["ct"].pixel_array)
    finally:
        node.stop()


# -- security ----------------------------------------------------------------------------------
def test_token_and_basic_auth(tmp_path):
    token, http_port = "s3cret-token-0123456789", free_port()
    config = write_config(
        tmp_path / "auth.toml",
        f'[http]\nport = {http_port}\ntoken = "{token}"\nuser = "admin"\npassword = "pass-word"\n',
    )
    node = NodeProcess(tmp_path / "data", config=config, extra_args=("--http-port", str(http_port)))
    node.start()
    try:
        http = Http(http_port)
        for path in ("/api/stats", "/", "/api/studies", "/api/openapi.json"):
            status, headers, _ = http.get(path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Basic")
        assert http.get("/api/stats", f"Bearer {token}")[0] == 200
        assert http.get("/api/stats", "Bearer wrong-token-0123456789")[0] == 401
        basic = "Basic " + base64.b64encode(b"admin:pass-word").decode()
        assert http.get("/api/stats", basic)[0] == 200
        wrong = "Basic " + base64.b64encode(b"admin:nope").decode()
        assert http.get("/api/stats", wrong)[0] == 401
        browser = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
        assert http.get("/", browser)[0] == 200
    finally:
        node.stop()


def test_refuses_to_serve_beyond_loopback_without_auth(tmp_path):
    config = write_config(tmp_path / "open.toml", '[http]\nhost = "0.0.0.0"\nport = 8042\n')
    result = run_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "refusing to serve patient data unauthenticated" in result.stderr
    assert run_cli("check-config", "--config", str(config)).returncode == 2
    # the same when the port is only given on the command line
    config = write_config(tmp_path / "off.toml", '[http]\nhost = "0.0.0.0"\nport = 0\n')
    result = run_cli(
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        str(free_port()),
        "--http-port",
        str(free_port()),
    )
    assert result.returncode == 2
    assert "refusing to serve patient data unauthenticated" in result.stderr


# -- a real browser ----------------------------------------------------------------------------


def test_dashboard_and_study_page_in_chromium(archive, browser):
    node, http = archive
    ARTIFACTS.mkdir(exist_ok=True)
    stats = node.stats()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(http.base + "/")
    cards = {c.get_attribute("data-card"): c.inner_text() for c in page.locator(".card").all()}
    assert cards["Studies"].endswith(str(stats["studies"]))
    assert cards["Instances"].endswith(str(stats["instances"]))
    assert page.locator("svg.chart").count() == 3
    modality_chart = page.locator("svg.chart").first.text_content()
    assert all(m in modality_chart for m in stats["by_modality"])
    assert page.locator("table.associations tbody tr").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.goto(http.base + "/studies")
    assert page.locator("table.studies tbody tr").count() == stats["studies"]
    page.fill("input[name=PatientName]", "doe*")
    page.fill("input[name=StudyDate]", "20200101-20201231")
    page.click("button:text('Search')")
    rows = page.locator("table.studies tbody tr")
    assert rows.count() == 2
    assert sorted(rows.all_inner_texts()) == sorted(
        t for t in rows.all_inner_texts() if "WEB-A" in t or "WEB-B" in t
    )

    page.goto(http.base + "/studies?PatientID=WEB-S")
    page.click("table.studies a")
    page.wait_for_load_state("networkidle")
    thumbs = page.locator("img.thumb")
    assert thumbs.count() == 12
    widths = page.evaluate(
        "Array.from(document.querySelectorAll('img.thumb')).map(i => i.complete && i.naturalWidth)"
    )
    assert widths == [128] * 12
    page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

    page.goto(http.base + "/studies?PatientID=WEB-R")
    page.click("table.studies a")
    page.wait_for_load_state("networkidle")
    widths = page.evaluate(
        "Array.from(document.querySelectorAll('img.thumb')).map(i => i.complete && i.naturalWidth)"
    )
    assert len(widths) == 3 and all(widths), widths  # CT, MR, US
    page.screenshot(path=str(ARTIFACTS / "study-real.png"), full_page=True)

    page.goto(http.base + "/studies?PatientID=WEB-S")
    page.click("table.studies a")
    page.wait_for_load_state("networkidle")
    thumbs = page.locator("img.thumb")
    thumbs.first.click()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 128
    assert "JPEG-LS Lossless" in page.inner_text("body")
    page.close()


# -- rendering without a node ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["synthetic CT", "SC_rgb_2frame.dcm", "OBXXXX1A_2frame.dcm"])
def test_preview_of_a_jpeg_xl_object_equals_the_original(name):
    """JPEG XL (which pydicom cannot decode) is shown through compacs' codec table."""
    from pydicom import dcmwrite

    from compacs.codecs.table import BY_SYNTAX
    from compacs.codecs.transcode import transcode
    from compacs.web.render import preview_png

    if name == "synthetic CT":  # JPEG XL carries unsigned samples only
        out = BytesIO()
        dcmwrite(out, next(ct_series(1, 64, 64)), enforce_file_format=True)
        data = out.getvalue()
    else:
        data = by_name(name).read_bytes()
    jxl = transcode(data, BY_SYNTAX["1.2.840.10008.1.2.4.110"]).data
    assert dcmread(BytesIO(jxl)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.110"
    assert preview_png(jxl) == preview_png(data)
    assert preview_png(jxl, frame=0, size=32) == preview_png(data, frame=0, size=32)
