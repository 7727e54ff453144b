"""WADO-RS within bounds (issue 17): a real node (compression off, 2 handler threads, a
2 s send timeout) holding a ~320 MiB study of 64 generated 5 MiB instances and a small
series. What a client that stops reading, a HEAD, a stored file gone mid-stream and a
whole large study cost the node, read from /proc (RSS, peak RSS, bytes read) and from
raw sockets; never from the clock.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from tests.support.node import web_node
from tests.support.procfs import peak_rss_kib, read_chars, reset_peak_rss, rss_kib
from tests.support.scu import send_datasets

TOKEN = "bounds-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEND_TIMEOUT = 2
CONFIG = f'worker_threads = 2\nsend_timeout = {SEND_TIMEOUT}\n[compression]\nwhen = "off"\n'
FRAMES, ROWS, COLS = 10, 512, 512  # 5 MiB of 16-bit pixels an instance
BIG = 64  # instances of the large study: 320 MiB
MIB = 1 << 20
INSTANCE_BYTES = FRAMES * ROWS * COLS * 2


def instance(study: str, series: str, number: int, frames: int = FRAMES) -> Dataset:
    """A native multi-frame object (Multi-frame Grayscale Word SC) of ``frames`` frames."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "BOUNDS", "Bounds^Test", "OT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260115", 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.arange(frames * ROWS * COLS, dtype=np.uint32) * (number + 1)) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node, its web port, the large study's UID and the small series' instances."""
    tmp = tmp_path_factory.mktemp("bounds")
    node, port = web_node(tmp, CONFIG, TOKEN)
    node.start()
    try:
        study = generate_uid()
        series = generate_uid()
        for start in range(0, BIG, 8):  # 8 at a time: the test process holds 40 MiB at most
            batch = [instance(study, series, n) for n in range(start, min(start + 8, BIG))]
            assert send_datasets(node.port, batch) == [0] * len(batch)
        small_study, small_series = generate_uid(), generate_uid()
        small = [instance(small_study, small_series, n, frames=1) for n in range(4)]
        assert send_datasets(node.port, small) == [0] * 4
        yield node, port, study, small, tmp
    finally:
        node.stop()


def get(port: int, target: str, method: str = "GET", accept: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = dict(AUTH, **({"Accept": accept} if accept else {}))
        conn.request(method, f"/dicom-web{target}", headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def raw_request(port: int, target: str, method: str = "GET") -> socket.socket:
    """A socket that sent one request and reads nothing yet (a small receive buffer, so
    that a client that stops reading stalls the server's send soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    head = f"{method} /dicom-web{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += f"Authorization: Bearer {TOKEN}\r\n\r\n"
    sock.sendall(head.encode())
    return sock


def read_until_closed(sock: socket.socket, limit: int = 64 * MIB) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    chunks = []
    total = 0
    while total < limit:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def established(local_ports: set[int]) -> set[int]:
    """Those of ``local_ports`` whose TCP connection is still ESTABLISHED (/proc/net/tcp)."""
    alive = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].split(":")[1], 16)
        if port in local_ports and fields[3] == "01":
            alive.add(port)
    return alive


def stored_file(tmp, sop_uid: str):
    (path,) = (tmp / "data").rglob(f"{sop_uid}.*.dcm")
    return path


# -- 6: a client that stops reading -------------------------------------------------------------
def test_clients_that_stop_reading_hold_neither_threads_nor_memory_for_long(node):
    """Three clients stall on the 320 MiB study (2 handler threads): a fresh client's QIDO
    and WADO are still answered, the node holds about one instance a stalled client, not
    the study, and each stalled connection is aborted after [http] send_timeout."""
    proc, port, study, small, _ = node
    pid = proc.proc.pid
    before = rss_kib(pid)
    reset_peak_rss(pid)
    stalled = []
    for _ in range(3):
        sock = raw_request(port, f"/studies/{study}")
        got = b""
        while len(got) < 4096:
            got += sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
        stalled.append(sock)
    status, _, body = get(port, "/studies?PatientID=BOUNDS")
    assert status == 200 and len(json.loads(body)) == 2
    ds = small[0]
    target = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
    status, _, body = get(port, target + ds.SOPInstanceUID)
    assert status == 200 and ds.PixelData in body
    growth = (peak_rss_kib(pid) - before) * 1024
    study_mib = BIG * INSTANCE_BYTES / MIB
    print(f"\nstalled x3 on {study_mib:.0f} MiB: peak RSS growth {growth / MIB:.1f} MiB")
    assert growth < 64 * MIB  # fully buffered: 3 x 320 MiB
    ports = {sock.getsockname()[1] for sock in stalled}
    for _ in range(300):  # bounded: 30 s, 15 x the send timeout
        if not established(ports):
            break
        time.sleep(0.1)
    assert not established(ports), "stalled connections still open after the send timeout"
    for sock in stalled:
        sock.close()


# -- 7: a large study is never held in memory --------------------------------------------------
def test_a_large_study_streams_in_bounded_memory(node):
    proc, port, study, _, _ = node
    pid = proc.proc.pid
    before = rss_kib(pid)
    reset_peak_rss(pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/dicom-web/studies/{study}", headers=AUTH)
    response = conn.getresponse()
    assert response.status == 200
    boundary = re.search(r"boundary=([^;]+)", response.headers["Content-Type"]).group(1)
    total, tail, parts = 0, b"", 0
    while chunk := response.read(MIB):
        total += len(chunk)
        parts += (tail + chunk).count(b"Content-Type: application/dicom")
        tail = chunk[-64:]
    conn.close()
    assert tail.endswith(f"--{boundary}--\r\n".encode()) and parts == BIG
    study_bytes = BIG * INSTANCE_BYTES
    growth = (peak_rss_kib(pid) - before) * 1024
    print(
        f"\nstudy {study_bytes / MIB:.0f} MiB sent ({total / MIB:.0f} MiB body): node RSS "
        f"{before / 1024:.0f} MiB before, peak growth {growth / MIB:.1f} MiB"
    )
    assert total > study_bytes
    assert growth < study_bytes // 4


# -- 4: HEAD reads nothing -------------------------------------------------------------------------
def test_head_answers_as_get_without_reading_the_study(node):
    proc, port, study, small, _ = node
    pid = proc.proc.pid
    ds = small[0]
    instance_path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    targets = (f"/studies/{study}", f"/studies/{study}/metadata", f"{instance_path}/frames/1")
    heads = {}
    for target in targets:  # every HEAD first: no GET still reading meanwhile
        read = read_chars(pid)
        heads[target] = get(port, target, "HEAD")
        assert read_chars(pid) - read < MIB, target  # GET reads 320 MiB of files for the study
    for target, (status, headers, body) in heads.items():
        sock = raw_request(port, target)  # GET: its status and headers only
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        sock.close()
        get_head = head.split(b"\r\n\r\n")[0].decode().lower()
        assert status == 200 and body == b"" and get_head.startswith("http/1.1 200")
        media = headers["Content-Type"].split("boundary=")[0]
        assert f"content-type: {media.lower()}" in get_head, (target, media)
        assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    assert get(port, "/studies/1.2.3.999", "HEAD")[0] == 404


# -- 3 and 5: metadata streamed; a file gone mid-stream -------------------------------------
def test_metadata_streams_one_document_at_a_time(node):
    _, port, _, small, _ = node
    ds = small[0]
    status, headers, body = get(port, f"/studies/{ds.StudyInstanceUID}/metadata")
    assert status == 200 and headers["Content-Type"] == "application/dicom+json"
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    docs = json.loads(body)
    assert sorted(d["00080018"]["Value"][0] for d in docs) == sorted(
        d.SOPInstanceUID for d in small
    )


def test_a_file_gone_mid_stream_ends_the_answer_without_its_closing_delimiter(node):
    proc, port, _, small, tmp = node
    ds = small[0]
    series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    _, _, body = get(port, f"{series}/metadata")
    order = [d["00080018"]["Value"][0] for d in json.loads(body)]
    gone = order[2]  # the third part: after the answer began
    stored_file(tmp, gone).unlink()
    sock = raw_request(port, series)
    answer = read_until_closed(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    boundary = re.search(rb"boundary=([0-9a-f]+)", head).group(1)
    assert body.count(b"Content-Type: application/dicom") == 2
    assert b"--" + boundary + b"--" not in body  # no closing delimiter (RFC 2046 5.1.1)
    assert not body.endswith(b"0\r\n\r\n")  # nor the last chunk (RFC 9112 7.1)
    log = proc.log()
    assert "dicomweb: retrieve failed after" in log and gone not in log  # no UIDs, no paths
    assert get(port, "/studies?PatientID=BOUNDS")[0] == 200  # the node goes on
    # the first object gone: the answer has not begun, so it is a 500
    stored_file(tmp, order[0]).unlink()
    assert get(port, series)[0] == 500
    assert get(port, f"{series}/metadata")[0] == 500
    assert gone not in proc.log() and order[0] not in proc.log()
