"""The OHIF viewer served by compacs (issue 17), driven in Debian's headless chromium.

One node holds six studies of real files (pydicom's and pydicom-data's), each sent by a
calling AE whose compression rule stores it in another syntax: JPEG-LS, HTJ2K, RLE, JPEG XL
lossless, JPEG baseline as received, and JPEG baseline recompressed to JPEG XL (.111, the
default for JPEG input). The browser is the independent reader: OHIF's study list must
show them, and each study must paint its cornerstone canvas (pixels read back from the
canvas) with no console error and every DICOMweb request answered 2xx. Screenshots go to
``test-artifacts/ohif/``.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.support.dicomfiles import storage_files
from tests.support.node import ARTIFACTS, ROOT, NodeProcess, free_port, write_config
from tests.support.scu import send_datasets

BUILD = ROOT / ".cache" / "ohif" / "3.13.2"  # where `make ohif` puts the viewer
SHOTS = ARTIFACTS / "ohif"
USER, PASSWORD = "viewer", "ohif-secret-1"
PAINT_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Case:
    """One study: a real file, the calling AE whose rule picks the syntax it is stored in."""

    name: str
    file: str
    calling: str
    action: str
    stored: str  # the transfer syntax UID it is stored in


CASES = [
    Case("ct-jpeg-ls", "CT_small.dcm", "TO_JLS", "jpeg-ls", "1.2.840.10008.1.2.4.80"),
    Case("mr-htj2k", "MR_small.dcm", "TO_HTJ2K", "htj2k", "1.2.840.10008.1.2.4.201"),
    Case("us-rle", "US1_UNCR.dcm", "TO_RLE", "rle", "1.2.840.10008.1.2.5"),
    Case("mr-jpeg-xl", "MR2_UNCR.dcm", "TO_JXL", "jpeg-xl", "1.2.840.10008.1.2.4.110"),
    Case("us-jpeg-baseline", "examples_ybr_color.dcm", "KEEP", "keep", "1.2.840.10008.1.2.4.50"),
    # JPEG baseline input is recompressed to JPEG XL by default (no rule for this AE)
    Case("sc-jpeg-xl-jpeg", "SC_rgb_jpeg.dcm", "DEFAULT", "", "1.2.840.10008.1.2.4.111"),
]


def _rules() -> str:
    return "".join(
        f'[[compression.rules]]\ncalling_ae = "{c.calling}"\naction = "{c.action}"\n'
        for c in CASES
        if c.action
    )


def _auth_header() -> dict[str, str]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@dataclass
class Viewer:
    node: NodeProcess
    http: int
    viewer: int
    studies: dict[str, str]  # case name -> Study Instance UID

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.viewer}"


def _start(folder: Path, extra: str = "") -> tuple[NodeProcess, int, int]:
    http, viewer = free_port(), free_port()
    config = write_config(
        folder / "node.toml",
        f'[http]\nport = {http}\nuser = "{USER}"\npassword = "{PASSWORD}"\n'
        f"[viewer]\nport = {viewer}\n{extra}"
        '[compression]\nwhen = "ingest"\n' + _rules(),
    )
    args = ("--http-port", str(http), "--viewer-port", str(viewer))
    node = NodeProcess(folder / "data", config=config, extra_args=args)
    return node.start(), http, viewer


@pytest.fixture(scope="module")
def ohif(tmp_path_factory):
    if not (BUILD / "index.html").is_file():
        pytest.fail(f"no OHIF build in {BUILD}: run `make ohif` (a prerequisite of make test)")
    node, http, viewer = _start(tmp_path_factory.mktemp("ohif"))
    files = {f.name: f for f in storage_files()}
    studies = {}
    try:
        for case in CASES:
            ds = dcmread(files[case.file].path)
            for _ in ds.iterall():  # CT_small's implicit-VR elements get their VRs now
                pass
            # each case its own patient and study (several files share CompressedSamples')
            ds.PatientName = f"{case.name.upper().replace('-', '')}^OHIF"
            ds.PatientID = f"OHIF-{case.name}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            assert send_datasets(node.port, [ds], calling=case.calling) == [0]
            studies[case.name] = ds.StudyInstanceUID
            sop = ds.SOPInstanceUID
            status, _, body = _get(f"http://127.0.0.1:{http}/api/instances/{sop}", _auth_header())
            assert status == 200
            assert json.loads(body)["transfer_syntax_stored"]["uid"] == case.stored, case
        yield Viewer(node, http, viewer, studies)
    finally:
        node.stop()


# What OHIF's "investigational use" notice stores once the user has confirmed it for the
# session (its InvestigationalUseDialog, option "always", OHIF's default, which compacs keeps)
NOTICE_CONFIRMED = "sessionStorage.setItem('investigationalUseDialog', 'hidden')"


class Watched:
    """A page with its console errors, uncaught exceptions and DICOMweb answers recorded;
    unless ``fresh``, its session has confirmed OHIF's investigational-use notice."""

    def __init__(self, browser, viewport=(1400, 900), fresh: bool = False) -> None:
        self.context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            http_credentials={"username": USER, "password": PASSWORD},
        )
        if not fresh:
            self.context.add_init_script(NOTICE_CONFIRMED)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dicomweb: list[tuple[int, str, str]] = []
        self.failed: list[tuple[int, str]] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("response", self._response)

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"{message.location.get('url')}: {message.text}")

    def _response(self, response) -> None:
        if response.status >= 400:
            self.failed.append((response.status, response.url))
        if "/dicom-web/" in response.url:
            content_type = response.headers.get("content-type", "")
            self.dicomweb.append((response.status, response.url, content_type))

    def close(self) -> None:
        self.context.close()


CANVAS_STATS = """(canvas) => {
  const ctx = canvas.getContext('2d');
  const {width, height} = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  const seen = new Set();
  let sum = 0, sum2 = 0, n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] * 0.299 + data[i + 1] * 0.587 + data[i + 2] * 0.114;
    seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    sum += v; sum2 += v * v; n++;
  }
  const mean = sum / n;
  return {distinct: seen.size, std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), width, height};
}"""


def _painted(watched: Watched, timeout_ms: int = PAINT_TIMEOUT_MS) -> dict:
    """The cornerstone canvas's pixel statistics once it shows an image (bounded wait,
    cut short by the first error in the page)."""
    page = watched.page
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="attached", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    stats = {}
    while time.monotonic() < deadline and not watched.errors:
        stats = canvas.evaluate(CANVAS_STATS)
        if stats["distinct"] > 16 and stats["std"] > 1.0:
            return stats
        page.wait_for_timeout(250)
    return stats


def _dismiss_tour(page) -> None:
    """OHIF's first-visit tour bubble covers part of the viewport in screenshots."""
    skip = page.get_by_text("Skip all")
    if skip.count():
        skip.first.click()


def test_a_new_session_sees_ohifs_investigational_use_notice(ohif, browser):
    """OHIF warns that it is not a cleared medical device; compacs does not hide that."""
    watched = Watched(browser, fresh=True)
    try:
        watched.page.goto(ohif.base + "/")
        notice = watched.page.get_by_text("investigational", exact=False)
        notice.first.wait_for(timeout=PAINT_TIMEOUT_MS)
        assert notice.count() >= 1
    finally:
        watched.close()


def test_study_list_shows_the_studies_stored_in_compacs(ohif, browser):
    watched = Watched(browser, viewport=(1600, 900))
    try:
        watched.page.goto(ohif.base + "/")
        for case in CASES:
            family = case.name.upper().replace("-", "")
            watched.page.get_by_text(family).first.wait_for(timeout=PAINT_TIMEOUT_MS)
        SHOTS.mkdir(parents=True, exist_ok=True)
        watched.page.screenshot(path=str(SHOTS / "study-list.png"))
        assert watched.errors == []
        searches = [r for r in watched.dicomweb if "/dicom-web/studies?" in r[1]]
        assert searches and all(status == 200 for status, _, _ in searches)
    finally:
        watched.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_opening_a_study_paints_its_image(ohif, browser, case):
    watched = Watched(browser)
    try:
        uid = ohif.studies[case.name]
        watched.page.goto(f"{ohif.base}/viewer?StudyInstanceUIDs={uid}")
        stats = _painted(watched)
        _dismiss_tour(watched.page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        watched.page.screenshot(path=str(SHOTS / f"{case.name}.png"))
        frames = [r for r in watched.dicomweb if "/frames/" in r[1]]
        assert frames, "OHIF fetched no frame"
        sent = {content_type.split(";")[1].strip() for _, _, content_type in frames}
        failed = [(status, url) for status, url, _ in watched.dicomweb if not 200 <= status < 300]
        assert failed == []
        assert watched.errors == [], f"frames sent as {sent}"
        assert stats["distinct"] > 16 and stats["std"] > 1.0, stats
    finally:
        watched.close()


def test_study_page_links_to_the_viewer_which_opens_the_study(ohif, browser):
    uid = ohif.studies["ct-jpeg-ls"]
    expected = f"http://127.0.0.1:{ohif.viewer}/viewer?StudyInstanceUIDs={uid}"
    status, _, body = _get(f"http://127.0.0.1:{ohif.http}/api/studies/{uid}", _auth_header())
    assert status == 200 and json.loads(body)["viewer_url"] == expected
    watched = Watched(browser)
    try:
        main = f"http://127.0.0.1:{ohif.http}"
        watched.page.goto(f"{main}/studies/{uid}")
        link = watched.page.locator("a.viewer")
        assert link.get_attribute("href") == expected
        link.click()
        watched.page.wait_for_url(expected)
        # the main port's page is not under test here (its /favicon.ico answers 404)
        watched.errors = [e for e in watched.errors if not e.startswith(main + "/")]
        stats = _painted(watched)
        assert watched.errors == []
        assert stats["distinct"] > 16 and stats["std"] > 1.0, stats
    finally:
        watched.close()


def test_viewer_port_wants_credentials_and_has_its_own_policy(ohif):
    for path in ("/", "/app-config.js", "/dicom-web/studies"):
        status, headers, _ = _get(ohif.base + path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
    status, headers, _ = _get(ohif.base + "/viewer", _auth_header())
    page_policy = headers["Content-Security-Policy"]
    assert status == 200 and "'unsafe-eval'" not in page_policy
    assert "'wasm-unsafe-eval'" in page_policy and "connect-src 'self'" in page_policy
    status, headers, body = _get(ohif.base + "/app-config.js", _auth_header())
    assert status == 200 and b'"qidoRoot": "/dicom-web"' in body
    status, _, _ = _get(ohif.base + "/no-such-bundle.js", _auth_header())
    assert status == 404
    # the Host allow-list of the main port (DNS rebinding)
    status, _, _ = _get(ohif.base + "/", {**_auth_header(), "Host": "evil.example"})
    assert status == 400


def test_missing_viewer_build_leaves_the_node_up_with_a_hint(tmp_path):
    node, http, viewer = _start(tmp_path, f'dir = "{tmp_path / "no-build"}"\n')
    try:
        assert "make ohif" in node.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", viewer), timeout=2).close()
        status, _, _ = _get(f"http://127.0.0.1:{http}/api/stats", _auth_header())
        assert status == 200
    finally:
        node.stop()
