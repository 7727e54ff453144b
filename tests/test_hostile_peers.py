"""Peers that stop talking, or announce more than they may send, cannot hold the node;
objects whose pixel data cannot hold what they declare are never decoded (frame bombs).

Raw sockets play the attacker (bounded in count and time); pynetdicom is the modality
that must still get through. The attacker connects from 127.0.0.2, the modality from
127.0.0.1: both loopback, so the per-host limit can be seen from one machine.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import tracemalloc
import urllib.error
import urllib.request
import zlib

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import iter_pixels
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from compacs.codecs.decode import NotDecodable, source_frames
from compacs.codecs.geometry import ImplausiblePixelData, check_pixel_data
from compacs.codecs.pixels import PixelInfo
from compacs.codecs.streams import jxl_geometry
from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dicomfiles import all_files
from tests.support.node import NO_COMPRESSION, echo, free_port, write_config
from tests.support.procfs import descendants
from tests.support.scu import dataset_bytes, send_datasets, send_raw

DEFLATED = "1.2.840.10008.1.2.1.99"

ATTACKER = "127.0.0.2"
ACSE_TIMEOUT = 3


def _a_associate_rq_start() -> bytes:
    """The first 16 bytes of an A-ASSOCIATE-RQ (PS3.8 9.3.2) that announces 1000 bytes."""
    return bytes([0x01, 0x00]) + struct.pack(">L", 1000) + b"\x00\x01\x00\x00COMPAC"


def _silent_connections(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        sock.sendall(_a_associate_rq_start())
        out.append(sock)
    return out


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the node closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _node(node_factory, tmp_path, extra: str = ""):
    config = write_config(
        tmp_path / "hostile.toml",
        f"[network]\nacse_timeout = {ACSE_TIMEOUT}\nnetwork_timeout = 4\n{extra}",
    )
    return node_factory(config=config)


def test_silent_connections_neither_lock_out_others_nor_stay(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    threads_before = _threads(node.proc.pid)
    silent = _silent_connections(node.port, 40)
    try:
        # another host gets through at once: the attacker holds at most its share of slots
        assert echo(node.port) == Status.SUCCESS
        # and every silent connection is closed by the node: at once past the per-host
        # limit, the others when the ACSE timeout ends their negotiation
        assert all(_closed_by_peer(s, ACSE_TIMEOUT + 10) for s in silent)
    finally:
        for sock in silent:
            sock.close()
    log = node.log()
    assert "still negotiating" in log
    assert "not negotiated within 3 s (ACSE timeout; 6 bytes received" in log
    # their threads are gone too (give the association threads a moment to end)
    for _ in range(50):
        if _threads(node.proc.pid) <= threads_before + 2:
            break
        time.sleep(0.1)
    assert _threads(node.proc.pid) <= threads_before + 2


def test_the_same_host_gets_through_once_the_acse_timeout_ends_the_stall(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    silent = _silent_connections(node.port, 40, source="127.0.0.1")
    try:
        answered = None
        for _ in range(4 * ACSE_TIMEOUT):
            try:
                answered = echo(node.port, timeout=2)
            except OSError:
                answered = None
            if answered == Status.SUCCESS:
                break
            time.sleep(1)
        assert answered == Status.SUCCESS
    finally:
        for sock in silent:
            sock.close()


def _established(port: int) -> socket.socket:
    """A raw socket that completed association negotiation (Verification only)."""
    ae = AE(ae_title="RAW")
    ae.add_requested_context(Verification)
    # build the A-ASSOCIATE-RQ with pynetdicom, send it on a socket of our own
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAW"
    primitive.called_ae_title = "COMPACS"
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    primitive.user_information = [item]
    cx = ae.requested_contexts[0]
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode())
    header = sock.recv(6)
    assert header[0] == 0x02, "A-ASSOCIATE-AC expected"
    (length,) = struct.unpack(">L", header[2:6])
    while length:
        length -= len(sock.recv(length))
    return sock


def test_a_p_data_longer_than_announced_ends_the_connection_unread(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    sock = _established(node.port)
    try:
        sock.sendall(bytes([0x04, 0x00]) + struct.pack(">L", 0xFFFFFFFF) + b"\x00" * 64)
        assert _closed_by_peer(sock, 10)
    finally:
        sock.close()
    assert "declaring 4294967295 bytes, over the 262144 allowed" in node.log()
    assert echo(node.port) == Status.SUCCESS


def test_a_p_data_that_stops_half_way_is_ended_by_the_network_timeout(node_factory, tmp_path):
    node = _node(node_factory, tmp_path)
    sock = _established(node.port)
    try:
        sock.sendall(bytes([0x04, 0x00]) + struct.pack(">L", 10000) + b"\x00" * 100)
        assert _closed_by_peer(sock, 4 + 10)  # network_timeout = 4
    finally:
        sock.close()
    assert echo(node.port) == Status.SUCCESS


def _rss_mib(pid: int) -> float:
    """Peak resident memory of the process (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_deflate_bomb_is_refused_as_it_inflates(node_factory, tmp_path):
    """1 MB on the wire claiming 1 GiB once inflated: refused with 0xA700 after inflating at
    most max_object_size, never the whole; nothing stored, and the node serves on."""
    node = _node(node_factory, tmp_path, "[ingest]\nmax_object_size = 67108864\n")
    (ds,) = ct_series(1, 16, 16, seed=900)
    plain = dataset_bytes(ds)
    # a private OB element of 1 GiB of zeros (0x0009,0x1010), encoded explicit VR LE
    huge = struct.pack("<HH2s2xL", 0x0009, 0x1010, b"OB", 1 << 30)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(plain[: plain.find(b"\xe0\x7f\x10\x00")])  # up to Pixel Data
    body += deflater.compress(huge)
    zeros = bytes(1 << 24)
    for _ in range(64):
        body += deflater.compress(zeros)
    body += deflater.flush()
    assert len(body) < 2 << 20
    response = send_raw(node.port, str(ds.SOPClassUID), str(ds.SOPInstanceUID), DEFLATED, body)
    assert response.Status == Status.OUT_OF_RESOURCES
    assert "inflates to more than 67108864 bytes" in response.ErrorComment
    peak = _rss_mib(node.proc.pid)
    print(
        f"\npeak RSS after a 1 GiB deflate bomb ({len(body) / 2**20:.1f} MiB sent): {peak:.0f} MiB"
    )
    assert peak < 1024  # the 1 GiB was never materialised
    assert node.stats()["instances"] == 0
    assert echo(node.port) == Status.SUCCESS


def test_a_data_set_over_the_size_limit_ends_the_association_as_it_arrives(node_factory, tmp_path):
    node = _node(node_factory, tmp_path, "[ingest]\nmax_object_size = 1048576\n")
    (small,) = ct_series(1, 64, 64, seed=901)
    (large,) = ct_series(1, 1024, 1024, seed=902)  # 2 MiB of pixels
    assert send_datasets(node.port, [small]) == [Status.SUCCESS]
    try:
        statuses = send_datasets(node.port, [large])
    except (AssertionError, RuntimeError, OSError):  # the association went away under it
        statuses = None
    assert statuses != [Status.SUCCESS]
    assert "([ingest] max_object_size): connection closed" in node.log()
    assert node.stats()["instances"] == 1
    assert echo(node.port) == Status.SUCCESS


def _rle_frame_bomb() -> Dataset:
    """One RLE frame declaring 8192 x 8192 x 3 samples x 16 bits (384 MiB decoded) whose six
    segments are one replicate run each (PS3.5 G.3.1): a few hundred bytes in all."""
    (ds,) = ct_series(1, 16, 16, seed=903)
    ds.Rows = ds.Columns = 8192
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    segments = 6
    offsets = [64 + 2 * n for n in range(segments)] + [0] * (15 - segments)
    frame = struct.pack("<16I", segments, *offsets) + b"\x81\x00" * segments
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def test_a_frame_bomb_is_never_decoded(node_factory, tmp_path):
    """An RLE object whose frame cannot hold the pixels it declares is stored as received
    (it is a well-formed data set) but no decoder allocates its 384 MiB: compression fails
    with the reason, its preview is a 4xx naming it, and the node serves on."""
    http_port = free_port()
    node = node_factory(extra_args=("--http-port", str(http_port)))
    bomb = _rle_frame_bomb()
    assert len(dataset_bytes(bomb)) < 2048
    assert send_datasets(node.port, [bomb]) == [Status.SUCCESS]
    deadline = time.monotonic() + 60
    while node.stats()["compression"].get("failed", 0) < 1:
        assert time.monotonic() < deadline, node.stats()
        time.sleep(0.5)
    # the decode runs in a compression worker process: the node's and every worker's peak
    peaks = [round(_rss_mib(pid)) for pid in [node.proc.pid, *descendants(node.proc.pid)]]
    print(f"\npeak RSS after an RLE frame bomb (384 MiB declared): node and workers {peaks} MiB")
    assert len(peaks) > 1 and max(peaks) < 384  # the declared frame was never allocated
    assert "RLE segment 1 of 2 bytes cannot expand" in node.log()
    uid = str(bomb.SOPInstanceUID)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/instances/{uid}/preview.png")
    assert 400 <= refused.value.code < 500
    assert b"cannot expand" in refused.value.read()
    assert echo(node.port) == Status.SUCCESS


def _claiming(syntax: str, stream: bytes, like: Dataset) -> Dataset:
    ds = like.copy()
    ds.file_meta = like.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.PixelRepresentation = 0
    return ds


def _enlarged_jpeg(stream: bytes, marker: bytes) -> bytes:
    """The stream with its frame header (ISO 10918-1 B.2.2, 14495-1 C.2.2) saying 16000 x 16000."""
    out = bytearray(stream)
    struct.pack_into(">HH", out, out.find(marker) + 5, 16000, 16000)
    return bytes(out)


def _enlarged_j2k(stream: bytes) -> bytes:
    """The codestream with its SIZ (ISO 15444-1 A.5.1) saying 16000 x 16000."""
    out = bytearray(stream)
    struct.pack_into(">II", out, out.find(b"\xff\x4f\xff\x51") + 8, 16000, 16000)
    return bytes(out)


ENLARGED = {
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode, b"\xff\xf7"),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.70", imagecodecs.ljpeg_encode, b"\xff\xc3"),
    "jpeg-2000": ("1.2.840.10008.1.2.4.90", imagecodecs.jpeg2k_encode, None),
}


@pytest.mark.parametrize("name", ENLARGED)
def test_a_stream_declaring_more_pixels_than_the_data_set_is_never_decoded(name):
    """A 64 x 64 data set whose stream header declares 16000 x 16000: before this check
    pydicom's and imagecodecs' decoders allocated the declared 488 MiB and only then failed."""
    syntax, encode, marker = ENLARGED[name]
    (ct,) = ct_series(1, 64, 64, seed=904)
    pixels = ct.pixel_array.astype(np.uint16)
    stream = encode(pixels)
    honest = _claiming(syntax, stream, ct)
    (frame,) = source_frames(honest, PixelInfo.of(honest))
    assert np.array_equal(frame, pixels)  # the check lets a consistent stream through
    enlarged = _enlarged_j2k(stream) if marker is None else _enlarged_jpeg(stream, marker)
    bomb = _claiming(syntax, enlarged, ct)
    tracemalloc.start()
    try:
        with pytest.raises(NotDecodable, match="the stream declares 16000 x 16000 pixels"):
            source_frames(bomb, PixelInfo.of(bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB allocated"


@pytest.mark.parametrize("shape", [(8, 8), (100, 37), (600, 800), (513, 257), (4000, 6000)])
def test_jpeg_xl_geometry_is_read_from_its_size_header(shape):
    """ISO 18181-1 SizeHeader (small sizes, ratios, U32 sizes) as libjxl wrote it."""
    stream = imagecodecs.jpegxl_encode(np.zeros(shape, np.uint8), lossless=True)
    assert jxl_geometry(stream) == (*shape, None)


def test_no_public_file_a_decoder_reads_is_refused_by_the_geometry_check():
    """Every pydicom test file and pydicom-data file the geometry check refuses is one
    pydicom's own decoders cannot read either (no false refusal)."""
    refused = {}
    for path in all_files():
        try:
            ds = pydicom.dcmread(path)
            info = PixelInfo.of(ds)
        except Exception:  # no pixels, or not DICOM: nothing to check
            continue
        try:
            check_pixel_data(ds, info)
        except ImplausiblePixelData as exc:
            refused[path.name] = str(exc)
            with pytest.raises(Exception):  # noqa: B017 - any decoder failure will do
                for _ in iter_pixels(ds):
                    pass
    assert set(refused) == {"MR_truncated.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}


def _tiled_ct(side: int, seed: int) -> pydicom.Dataset:
    """A CT data set of ``side`` x ``side`` pixels: one 512 x 512 synthetic slice tiled
    (the phantom drawn at full size took ~11 s of the test; the node stores the bytes
    without looking at them, so a tiled image costs it the same)."""
    (ds,) = ct_series(1, 512, 512, seed=seed)
    tiles = -(-side // 512)
    ds.PixelData = np.tile(ds.pixel_array, (tiles, tiles))[:side, :side].tobytes()
    ds.Rows = ds.Columns = side
    return ds


def test_a_large_data_set_costs_the_node_about_its_size_once(node_factory, tmp_path):
    """pynetdicom holds a received data set whole; compacs must not copy it again (it
    joined the File Meta header and the data set into one buffer: twice the size)."""
    node = node_factory(config=write_config(tmp_path / "off.toml", NO_COMPRESSION))
    idle = _rss_mib(node.proc.pid)
    ds = _tiled_ct(7168, seed=905)  # 98 MiB of pixels
    size = len(ds.PixelData) / 2**20
    assert send_datasets(node.port, [ds], max_pdu=262144) == [Status.SUCCESS]
    growth = _rss_mib(node.proc.pid) - idle
    print(f"\npeak RSS growth for one {size:.0f} MiB data set: {growth:.0f} MiB ({idle:.0f} idle)")
    assert growth < 1.5 * size
    (path,) = (node.data_dir / "store").rglob("*.dcm")
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert stored.PixelData == ds.PixelData
