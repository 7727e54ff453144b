"""STOW-RS at /dicom-web (issue 17, PS3.18 10.5): a real node stores what a real DICOMweb
client (``dicomweb-client``) and raw HTTP send; what it stored is read back over WADO-RS
as stored and decoded by pydicom's own decoders and DCMTK's dcmdjpls, found over QIDO-RS,
and the bad inputs of the issue (a non-DICOM part, a study UID that is not the URL's, a
truncated or stalled body, bodies over the limit, other media types) leave nothing behind.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from compacs.synthetic import ct_series
from tests.support.dcmtk import dcmdjpls_pixels
from tests.support.dicomfiles import by_name
from tests.support.node import web_node
from tests.support.scu import send_datasets
from tests.support.stored import wait_for_pending_zero

TOKEN = "stow-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_STOW_BODY = 4 << 20
BODY_TIMEOUT = 2
CONFIG = f"max_stow_body = {MAX_STOW_BODY}\nbody_timeout = {BODY_TIMEOUT}\n"  # in [http]
JPEG_LS = "1.2.840.10008.1.2.4.80"
BOUNDARY = "stow-test-boundary"
ORIGINALS = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_UNCR.dcm")
FAILED_SOP = "00081198"
REFERENCED_SOP = "00081199"
FAILURE_REASON = "00081197"


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[tuple]:
    """A node with the default compression policy, STOW bodies up to 4 MiB, a 2 s body
    timeout; its web port behind TOKEN."""
    tmp = tmp_path_factory.mktemp("stow")
    node, http_port = web_node(tmp, CONFIG, TOKEN)
    node.start()
    try:
        yield node, http_port
    finally:
        node.stop()


def client(port: int) -> DICOMwebClient:
    return DICOMwebClient(f"http://127.0.0.1:{port}/dicom-web", headers=AUTH)


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def body_of(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart/related body (RFC 2046 5.1.1) of application/dicom parts."""
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def related(boundary: str = BOUNDARY, quoted: bool = True) -> str:
    if quoted:
        return f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return f"multipart/related; type=application/dicom; boundary={boundary}"


def post(
    port: int,
    body: bytes,
    content_type: str | None = None,
    *,
    study: str = "",
    auth: bool = True,
    method: str = "POST",
    target: str = "",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    headers = dict(AUTH) if auth else {}
    headers["Content-Type"] = content_type or related()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        path = target or "/dicom-web/studies" + (f"/{study}" if study else "")
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def instances(port: int, **filters: str) -> list[dict]:
    """QIDO-RS instance search (raw HTTP): the DICOM JSON of each match."""
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/dicom-web/instances?{query}", headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def found(port: int, sop_instance: str) -> bool:
    return bool(instances(port, SOPInstanceUID=sop_instance))


def api_instance(port: int, uid: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/api/instances/{uid}", headers=AUTH)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def failure_reasons(answer: bytes) -> list[int]:
    module = json.loads(answer)
    return [
        item[FAILURE_REASON]["Value"][0] for item in module.get(FAILED_SOP, {}).get("Value", [])
    ]


def referenced(answer: bytes) -> list[str]:
    module = json.loads(answer)
    return [
        item["00081155"]["Value"][0] for item in module.get(REFERENCED_SOP, {}).get("Value", [])
    ]


def cts(n: int, seed: int, size: int = 32) -> list[Dataset]:
    return list(ct_series(n, size, size, seed=seed, patient_id=f"STOW{seed}"))


def spool_files(node) -> list[str]:
    """Files the node process has open in, or left in, its STOW spool directory."""
    spool = node.data_dir.resolve() / "stow-spool"
    left = [str(p) for p in spool.iterdir()] if spool.exists() else []
    fds = Path(f"/proc/{node.proc.pid}/fd")
    opened = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(spool)):
            opened.append(target)
    return left + opened


def wait_until(predicate, timeout: float = 30) -> bool:
    """Polls ``predicate`` until it holds; False if it never did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def read_answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or 30 s pass)."""
    sock.settimeout(30)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def head(port: int, *, length: int | None = None, chunked: bool = False) -> bytes:
    lines = [
        "POST /dicom-web/studies HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {TOKEN}",
        f"Content-Type: {related()}",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- a real client ---------------------------------------------------------------------------
def test_dicomweb_client_stores_ct_mr_multiframe_rgb_read_back_bit_exact(web):
    node, port = web
    originals = [pydicom.dcmread(by_name(name)) for name in ORIGINALS]
    dw = client(port)
    answer = dw.store_instances(originals)
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert stored == [ds.SOPInstanceUID for ds in originals]
    assert "FailedSOPSequence" not in answer
    for item in answer.ReferencedSOPSequence:
        assert item.RetrieveURL.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")
    wait_for_pending_zero(node)  # the default policy compresses in the background
    for ds in originals:
        assert found(port, ds.SOPInstanceUID)
        back = dw.retrieve_instance(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        assert np.array_equal(back.pixel_array, ds.pixel_array), ds.SOPInstanceUID
        assert api_instance(port, ds.SOPInstanceUID)["calling_ae"] == "STOW-RS"


def test_the_compression_policy_applies_a_native_ct_ends_jpeg_ls_dcmtk_decodes(web, tmp_path):
    node, port = web
    (ct,) = cts(1, seed=11, size=64)
    status, headers, answer = post(port, body_of([part10(ct)]))
    assert status == 200 and headers["Content-Type"] == "application/dicom+json"
    assert referenced(answer) == [ct.SOPInstanceUID]
    wait_for_pending_zero(node)
    doc = api_instance(port, ct.SOPInstanceUID)
    assert doc["transfer_syntax_received"]["uid"] == ct.file_meta.TransferSyntaxUID
    assert doc["transfer_syntax_stored"]["uid"] == JPEG_LS
    back = client(port).retrieve_instance(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        ct.SOPInstanceUID,
        media_types=(("application/dicom", "*"),),
    )
    assert back.file_meta.TransferSyntaxUID == JPEG_LS
    assert np.array_equal(dcmdjpls_pixels(back, tmp_path), ct.pixel_array)


def test_the_same_instance_twice_is_answered_as_c_store_would(web):
    _, port = web
    (ct,) = cts(1, seed=12)
    for _ in range(2):
        status, _, answer = post(port, body_of([part10(ct)]))
        assert status == 200 and referenced(answer) == [ct.SOPInstanceUID]
    assert send_datasets(web[0].port, [ct]) == [0x0000]  # C-STORE: keep-first, Success
    assert len(instances(port, SOPInstanceUID=ct.SOPInstanceUID)) == 1


def test_a_body_over_max_body_but_under_max_stow_body_is_stored(web):
    """2 MiB: over the 1 MiB of every other route, and spooled to a file on its way."""
    _, port = web
    (ct,) = cts(1, seed=13, size=1024)
    status, _, answer = post(port, body_of([part10(ct)]))
    assert status == 200, answer
    assert referenced(answer) == [ct.SOPInstanceUID]


@pytest.mark.parametrize("quoted", [True, False])
def test_quoted_and_unquoted_boundary_and_type(web, quoted):
    _, port = web
    (ct,) = cts(1, seed=20 + quoted)
    status, _, answer = post(port, body_of([part10(ct)], "b0und"), related("b0und", quoted))
    assert status == 200 and referenced(answer) == [ct.SOPInstanceUID]
    assert found(port, ct.SOPInstanceUID)


# -- bad input -------------------------------------------------------------------------------
def test_a_non_dicom_part_among_good_ones_is_202_with_the_good_ones_stored(web):
    _, port = web
    good = cts(2, seed=30)
    body = body_of([part10(good[0]), b"%PDF-1.4 not DICOM at all", part10(good[1])])
    status, headers, answer = post(port, body)
    assert status == 202
    assert headers["Content-Type"] == "application/dicom+json"
    assert failure_reasons(answer) == [0xC000]
    assert "not a DICOM Part 10 file" in headers["Warning"]
    assert referenced(answer) == [ds.SOPInstanceUID for ds in good]
    assert all(found(port, ds.SOPInstanceUID) for ds in good)


def test_a_part_of_another_study_than_the_urls_is_refused_409_or_202(web):
    _, port = web
    (ours,) = cts(1, seed=40)
    (other,) = cts(1, seed=41)
    status, _, answer = post(port, body_of([part10(other)]), study=ours.StudyInstanceUID)
    assert status == 409
    assert failure_reasons(answer) == [0xC409]
    status, _, answer = post(
        port, body_of([part10(ours), part10(other)]), study=ours.StudyInstanceUID
    )
    assert status == 202
    assert referenced(answer) == [ours.SOPInstanceUID]
    assert failure_reasons(answer) == [0xC409]
    assert found(port, ours.SOPInstanceUID)
    assert not found(port, other.SOPInstanceUID)


def test_a_meta_sop_instance_uid_not_the_data_sets_is_0xa900(web):
    _, port = web
    (ct,) = cts(1, seed=45)
    uid = ct.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    data = part10(ct).replace(uid, other, 1)  # the first: (0002,0003) in the File Meta
    status, _, answer = post(port, body_of([data]))
    assert status == 409 and failure_reasons(answer) == [0xA900]
    assert not found(port, ct.SOPInstanceUID)


def test_a_truncated_body_stores_the_complete_parts_only_and_leaves_nothing(web):
    """The first part is stored while the body still arrives (read as a stream), the
    second (over 1 MiB: in a temporary file) is never stored; the client goes away."""
    node, port = web
    first, second = cts(2, seed=50, size=768)  # 1.2 MB each
    body = body_of([part10(first), part10(second)])
    cut = body.index(part10(second)) + 1_100_000  # over the 1 MiB a part keeps in memory
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(port, length=len(body)) + body[:cut])
        assert wait_until(lambda: found(port, first.SOPInstanceUID))  # streamed
        assert wait_until(lambda: bool(spool_files(node)))  # the second part: on disk
    assert wait_until(lambda: not spool_files(node))
    assert not found(port, second.SOPInstanceUID)
    (third,) = cts(1, seed=51)
    assert post(port, body_of([part10(third)]))[0] == 200  # the node serves the next


def test_a_client_that_stops_sending_is_answered_after_the_body_timeout(web):
    node, port = web
    first, second = cts(2, seed=55)
    body = body_of([part10(first), part10(second)])
    cut = body.index(part10(second)) + 1000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(port, length=len(body)) + body[:cut])
        answer = read_answer(sock)  # the server answers and closes: no thread held
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 202"), answer[:300]
    payload = rest.partition(b"\r\n\r\n")[2]
    assert referenced(payload) == [first.SOPInstanceUID]
    assert failure_reasons(payload) == [0xC000]
    assert not found(port, second.SOPInstanceUID)
    assert not spool_files(node)


def test_a_declared_2_gb_body_is_413_before_any_body_is_read(web):
    _, port = web
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(port, length=2 << 30))  # and not a byte of it
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_stow_body" in answer


def test_a_chunked_body_past_max_stow_body_is_413_and_nothing_stored(web):
    node, port = web
    before = node.stats()["instances"]
    (ct,) = cts(1, seed=60)
    start = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10(ct)
    junk = b"\x00" * 65536
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(port, chunked=True))
        sock.sendall(b"%x\r\n%s\r\n" % (len(start), start))
        try:
            for _ in range(2 * MAX_STOW_BODY // len(junk)):  # bounded: twice the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(junk), junk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_stow_body" in answer
    assert not found(port, ct.SOPInstanceUID)
    assert node.stats()["instances"] == before
    assert not spool_files(node)


@pytest.mark.parametrize(
    "content_type",
    [
        f"multipart/form-data; boundary={BOUNDARY}",
        "application/dicom+json",
        f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}',
    ],
)
def test_other_media_types_are_415_naming_the_type(web, content_type):
    _, port = web
    (ct,) = cts(1, seed=70)
    status, _, answer = post(port, body_of([part10(ct)]), content_type)
    assert status == 415
    assert content_type.split(";")[0].encode() in answer or b"dicom+xml" in answer
    assert not found(port, ct.SOPInstanceUID)


def test_without_credentials_401_with_a_challenge(web):
    _, port = web
    (ct,) = cts(1, seed=80)
    status, headers, _ = post(port, body_of([part10(ct)]), auth=False)
    assert status == 401 and "WWW-Authenticate" in headers
    assert not found(port, ct.SOPInstanceUID)


def test_post_only_on_the_store_resources(web):
    _, port = web
    status, headers, _ = post(port, b"", method="PUT")
    assert status == 405 and "POST" in headers["Allow"]
    for target in ("/dicom-web/series", "/api/studies"):
        status = post(port, b"x", target=target)[0]
        assert status == 405, target


# -- the multipart reader alone --------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3, 64, 100_000])
def test_multipart_reader_in_any_chunking(size):
    from compacs.web.dicomweb import multipart  # here: the other tests run without it

    body = b"preamble\r\n" + body_of([b"A\r\n--stow-test-boundar", b""]) + b"epilogue"
    reader = multipart.Reader(BOUNDARY.encode())
    events = []
    for at in range(0, len(body), size):
        events += reader.feed(body[at : at + size])
    reader.close()
    parts, current = [], b""
    for event in events:
        if isinstance(event, multipart.Data):
            current += event.data
        elif isinstance(event, multipart.End):
            parts.append(current)
            current = b""
    assert parts == [b"A\r\n--stow-test-boundar", b""]
    truncated = multipart.Reader(BOUNDARY.encode())
    truncated.feed(body[: body.index(b"A") + 1])
    with pytest.raises(multipart.Malformed):
        truncated.close()
