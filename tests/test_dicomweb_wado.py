"""WADO-RS at /dicom-web (issue 17): a real node storing instances as JPEG-LS, JPEG 2000,
HTJ2K (.201, .202), JPEG XL (.110), RLE, as received (native, and a lossy JPEG), and JPEG
baseline files as JPEG XL JPEG Recompression (.4.111), retrieved by a real DICOMweb client
(``dicomweb-client``) and by raw HTTP; pixels checked against the originals with readers
other than compacs (pydicom's own decoders, DCMTK's dcmdjpls and dcmdjpeg).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from compacs.codecs.table import codec_for
from compacs.codecs.transcode import transcode
from compacs.synthetic import ct_series
from compacs.web.dicomweb import wado
from tests.support import web
from tests.support.dcmtk import dcmdjpls_pixels, dcmtk_env, require_dcmtk
from tests.support.dicomfiles import DicomFile, by_name
from tests.support.node import web_node
from tests.support.scu import send_datasets, send_files
from tests.support.stored import stored_syntaxes, wait_for_pending_zero

TOKEN = "wado-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RECOMPRESSED = "1.2.840.10008.1.2.4.111"
JXL_LOSSLESS = "1.2.840.10008.1.2.4.110"
HTJ2K = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
RLE = "1.2.840.10008.1.2.5"
STORED_AS = {"SEND_JLS": JPEG_LS, "SEND_J2K": J2K, "SEND_RAW": EXPLICIT_LE}
# more stored syntaxes for the per-syntax matrix (the dicomweb-client figures)
MORE_STORED_AS = {
    "SEND_HTJ2K": HTJ2K,
    "SEND_RPCL": HTJ2K_RPCL,
    "SEND_JXL": JXL_LOSSLESS,
    "SEND_RLE": RLE,
}
RULES = {
    "SEND_JLS": "jpeg-ls",
    "SEND_J2K": "jpeg-2000",
    "SEND_RAW": "keep",
    "SEND_HTJ2K": "htj2k",
    "SEND_RPCL": "htj2k-rpcl",
    "SEND_JXL": "jpeg-xl",
    "SEND_RLE": "rle",
}
CONFIG = '[compression]\nwhen = "ingest"\n' + "".join(
    f'[[compression.rules]]\ncalling_ae = "{aet}"\naction = "{action}"\n'
    for aet, action in RULES.items()
)
MULTIFRAME = "emri_small.dcm"  # 10-frame MR, sent as SEND_JLS: stored JPEG-LS
JPEG_FILE = "SC_rgb_jpeg_dcmtk.dcm"  # JPEG baseline: stored .4.111 by the default policy
JPEG_FRAMES = "color3d_jpeg_baseline.dcm"  # 120-frame JPEG baseline US: stored .4.111
LOSSY = "LOSSY"  # a copy of JPEG_FILE (new UIDs) sent as SEND_RAW: kept as received, lossy
LONG = "LONG"  # a generated 200-frame object sent as SEND_JLS: stored JPEG-LS
MF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage


def multiframe(frames: int, rows: int = 32, cols: int = 32, *, seed: int = 0) -> Dataset:
    """A native multi-frame object of ``frames`` random 12-bit frames (Explicit VR LE)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(frames, rows, cols), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MF_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = f"WADO-MF{seed}", "Multi^Frame", "OT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260115", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def new_uids(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with its own study, series and instance UIDs."""
    out = copy.deepcopy(ds)
    out.StudyInstanceUID, out.SeriesInstanceUID = generate_uid(), generate_uid()
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return out


class Raw:
    """http.client against the node: what dicomweb-client does not send."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, target: str, accept: str | None = None, auth: bool = True):
        headers = dict(AUTH) if auth else {}
        if accept is not None:
            headers["Accept"] = accept
        return web.get(self.port, f"/dicom-web{target}", headers)


def parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The (Content-Type, body) parts of a multipart/related body (RFC 2046 5.1.1)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, value = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        out.append((headers["Content-Type"], value[:-2]))  # the CRLF before the delimiter
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A node (compression at ingest by calling AE) holding three CT series (JPEG-LS, JPEG
    2000, as received), two-CT series in HTJ2K (.201, .202), JPEG XL (.110) and RLE, a
    10-frame MR and a 200-frame object (JPEG-LS), two JPEG baseline files (.4.111, one of
    120 frames), a lossy JPEG kept as received, and an 8x8 image whose Pixel Data is under
    1 KiB."""
    tmp = tmp_path_factory.mktemp("wado")
    node, http_port = web_node(tmp, CONFIG, TOKEN)
    node.start()
    try:
        sent: dict[str, Dataset] = {}
        series: dict[str, list[Dataset]] = {}
        for n, aet in enumerate(STORED_AS):
            cts = list(ct_series(3, 64, 64, seed=70 + n, patient_id=f"WADO{n}"))
            assert send_datasets(node.port, cts, calling=aet) == [0] * 3
            series[aet] = cts
            sent.update({ds.SOPInstanceUID: ds for ds in cts})
        for n, aet in enumerate(MORE_STORED_AS):
            cts = list(ct_series(2, 64, 64, seed=80 + n, patient_id=f"WADO-M{n}"))
            assert send_datasets(node.port, cts, calling=aet) == [0] * 2
            series[aet] = cts
            sent.update({ds.SOPInstanceUID: ds for ds in cts})
        lossy = new_uids(pydicom.dcmread(by_name(JPEG_FILE)))
        long = multiframe(200, seed=5)
        for ds, aet, key in ((lossy, "SEND_RAW", LOSSY), (long, "SEND_JLS", LONG)):
            assert send_datasets(node.port, [ds], calling=aet) == [0]
            sent[ds.SOPInstanceUID] = ds
            series[key] = [ds]
        tiny = list(ct_series(1, 8, 8, seed=90, patient_id="WADO-TINY"))
        assert send_datasets(node.port, tiny, calling="SEND_RAW") == [0]
        series["TINY"] = tiny
        files = ((MULTIFRAME, "SEND_JLS"), (JPEG_FILE, "SEND_JPG"), (JPEG_FRAMES, "SEND_JPG"))
        for name, aet in files:
            ds = pydicom.dcmread(by_name(name))
            syntax = str(ds.file_meta.TransferSyntaxUID)
            f = DicomFile(by_name(name), str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
            assert send_files(node.port, [f], calling=aet) == [0]
            sent[ds.SOPInstanceUID] = ds
            series[name] = [ds]
        wait_for_pending_zero(node)
        stored = stored_syntaxes(tmp / "data")
        assert stored[series[MULTIFRAME][0].SOPInstanceUID] == JPEG_LS
        assert stored[series[JPEG_FILE][0].SOPInstanceUID] == RECOMPRESSED
        assert stored[series[JPEG_FRAMES][0].SOPInstanceUID] == RECOMPRESSED
        assert stored[series[LOSSY][0].SOPInstanceUID] == JPEG_BASELINE
        assert stored[series[LONG][0].SOPInstanceUID] == JPEG_LS
        for aet, syntax in {**STORED_AS, **MORE_STORED_AS}.items():
            assert {stored[ds.SOPInstanceUID] for ds in series[aet]} == {syntax}
        client = DICOMwebClient(url=f"http://127.0.0.1:{http_port}/dicom-web", headers=AUTH)
        yield client, Raw(http_port), sent, series, tmp
    finally:
        node.stop()


def same_pixels(received: Dataset, original: Dataset) -> None:
    """pydicom's own decoders on what came back, against the original's pixels."""
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(received.pixel_array, original.pixel_array)


# -- retrieve: Part 10 files in multipart/related --------------------------------------------
def test_retrieve_study_default_is_explicit_vr_little_endian_bit_exact(archive):
    client, _, sent, series, _ = archive
    for aet in STORED_AS:
        study = series[aet][0].StudyInstanceUID
        got = client.retrieve_study(study)
        assert sorted(ds.SOPInstanceUID for ds in got) == sorted(
            ds.SOPInstanceUID for ds in series[aet]
        )
        for ds in got:
            assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE  # PS3.18 8.7.3.4
            same_pixels(ds, sent[ds.SOPInstanceUID])


def test_retrieve_series_as_stored_with_transfer_syntax_star(archive):
    client, _, sent, series, tmp = archive
    for aet, syntax in STORED_AS.items():
        first = series[aet][0]
        got = client.retrieve_series(
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        assert len(got) == 3
        for ds in got:
            assert ds.file_meta.TransferSyntaxUID == syntax
            original = sent[ds.SOPInstanceUID].pixel_array
            if syntax == JPEG_LS:  # DCMTK's decoder, not pydicom's
                assert np.array_equal(dcmdjpls_pixels(ds, tmp), original)
            else:
                assert np.array_equal(ds.pixel_array, original)


def test_retrieve_instance_in_an_explicit_syntax_re_encoded_and_verified(archive):
    client, _, sent, series, tmp = archive
    for aet in ("SEND_J2K", "SEND_RAW"):
        ds0 = series[aet][1]
        got = client.retrieve_instance(
            ds0.StudyInstanceUID,
            ds0.SeriesInstanceUID,
            ds0.SOPInstanceUID,
            media_types=(("application/dicom", JPEG_LS),),
        )
        assert got.file_meta.TransferSyntaxUID == JPEG_LS
        assert np.array_equal(dcmdjpls_pixels(got, tmp), sent[ds0.SOPInstanceUID].pixel_array)


def test_recompressed_jpeg_comes_back_as_the_received_jpeg_byte_for_byte(archive):
    client, raw, _, series, _ = archive
    original = series[JPEG_FILE][0]
    uids = (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    got = client.retrieve_instance(*uids, media_types=(("application/dicom", JPEG_BASELINE),))
    assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE
    received = list(generate_frames(original.PixelData, number_of_frames=1))
    assert list(generate_frames(got.PixelData, number_of_frames=1)) == received
    # the default (Explicit VR Little Endian): the pixels pydicom decodes from the original
    native = client.retrieve_instance(*uids, media_types=("application/dicom",))  # no syntax
    assert native.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(native.pixel_array, original.pixel_array)
    # `*` (dicomweb-client's default here): the received JPEG, which every client decodes;
    # the JPEG XL stream only to a client that names its UID
    as_stored = client.retrieve_instance(*uids)
    assert as_stored.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert list(generate_frames(as_stored.PixelData, number_of_frames=1)) == received
    # (dicomweb-client refuses the JPEG XL UIDs: raw HTTP)
    status, headers, body = raw.get(
        "/studies/{}/series/{}/instances/{}".format(*uids),
        f"multipart/related; type=application/dicom; transfer-syntax={RECOMPRESSED}",
    )
    assert status == 200
    ((content_type, file),) = parts(headers["Content-Type"], body)
    assert content_type == f"application/dicom; transfer-syntax={RECOMPRESSED}"
    assert pydicom.dcmread(io.BytesIO(file)).file_meta.TransferSyntaxUID == RECOMPRESSED
    frames = client.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("image/jpeg", JPEG_BASELINE),)
    )
    assert frames == received


# -- metadata and bulk data --------------------------------------------------------------------
def test_metadata_has_every_attribute_and_pixel_data_as_bulk_data_uri(archive):
    client, _, sent, series, _ = archive
    first = series["SEND_JLS"][0]
    found = client.retrieve_study_metadata(first.StudyInstanceUID)
    assert len(found) == 3
    for doc in found:
        assert set(doc["7FE00010"]) == {"vr", "BulkDataURI"}
        ds = Dataset.from_json({k: v for k, v in doc.items() if k != "7FE00010"})
        original = sent[ds.SOPInstanceUID]
        for elem in original:
            if elem.tag != 0x7FE00010:
                assert ds[elem.tag].value == elem.value, elem.keyword
        pixels = client.retrieve_bulkdata(doc["7FE00010"]["BulkDataURI"])
        assert pixels == [original.PixelData]  # native little endian


def test_metadata_never_inlines_pixel_data_even_under_1_kib(archive):
    _, raw, _, series, _ = archive
    tiny = series["TINY"][0]
    assert len(tiny.PixelData) < 1024
    for target in (
        f"/studies/{tiny.StudyInstanceUID}/metadata",
        f"/studies/{tiny.StudyInstanceUID}/series/{tiny.SeriesInstanceUID}/metadata",
        f"/studies/{tiny.StudyInstanceUID}/series/{tiny.SeriesInstanceUID}"
        f"/instances/{tiny.SOPInstanceUID}/metadata",
    ):
        status, headers, body = raw.get(target)
        assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")
        (doc,) = json.loads(body)
        assert "InlineBinary" not in doc["7FE00010"]
        assert doc["7FE00010"]["BulkDataURI"].endswith(f"{tiny.SOPInstanceUID}/bulk/7FE00010")


# -- frames -----------------------------------------------------------------------------------
def test_frames_native_by_default_and_stored_jpeg_ls_with_star(archive):
    client, raw, sent, series, tmp = archive
    mr = series[MULTIFRAME][0]
    uids = (mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID)
    native = client.retrieve_instance_frames(*uids, frame_numbers=[1, 3, 10])
    expected = sent[mr.SOPInstanceUID].pixel_array  # pydicom's reader of the original
    for frame, number in zip(native, (1, 3, 10), strict=True):
        got = np.frombuffer(frame, dtype=expected.dtype).reshape(expected.shape[1:])
        assert np.array_equal(got, expected[number - 1])
    # transfer-syntax=*: the stored JPEG-LS frames, the part's type naming its syntax
    path = "/studies/{}/series/{}/instances/{}/frames/2,4".format(*uids)
    status, headers, body = raw.get(
        path, 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    )
    assert status == 200, body[:200]
    got = parts(headers["Content-Type"], body)
    assert [t for t, _ in got] == [f"image/jls; transfer-syntax={JPEG_LS}"] * 2
    for (_, frame), number in zip(got, (2, 4), strict=True):  # dcmdjpls decodes each
        one = Dataset()
        one.file_meta = pydicom.dataset.FileMetaDataset()
        one.file_meta.TransferSyntaxUID = JPEG_LS
        one.file_meta.MediaStorageSOPClassUID = mr.SOPClassUID
        one.SOPClassUID = mr.SOPClassUID
        one.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1010.{number}"
        for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
            setattr(one, kw, mr[kw].value)
        one.SamplesPerPixel, one.PixelRepresentation = 1, mr.PixelRepresentation
        one.PhotometricInterpretation = mr.PhotometricInterpretation
        one.PixelData = pydicom.encaps.encapsulate([frame])
        one["PixelData"].VR = "OB"
        assert np.array_equal(dcmdjpls_pixels(one, tmp), expected[number - 1])


# -- raw HTTP: negotiation and errors ----------------------------------------------------------
def test_quoted_and_unquoted_parameters_and_accept_lists(archive):
    _, raw, _, series, _ = archive
    ds = series["SEND_J2K"][0]
    target = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    for accept, syntax in (
        ("multipart/related; type=application/dicom; transfer-syntax=*", J2K),
        ('multipart/related; type="application/dicom"; transfer-syntax="*"', J2K),
        ('multipart/related; type="application/dicom"', EXPLICIT_LE),
        (
            f"text/html, multipart/related; type=application/dicom; transfer-syntax={JPEG_LS}; "
            "q=0.5",
            JPEG_LS,
        ),
        ("multipart/related; type=application/dicom; q=0, */*", EXPLICIT_LE),
        # the first acceptable range wins: one compacs cannot produce is passed over
        (
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.999, "
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}',
            JPEG_LS,
        ),
        (None, EXPLICIT_LE),
    ):
        status, headers, body = raw.get(target, accept)
        assert status == 200, (accept, body[:200])
        assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
        # streamed: chunked, one instance at a time, never sized up front
        assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
        got = parts(headers["Content-Type"], body)
        assert [t for t, _ in got] == [f"application/dicom; transfer-syntax={syntax}"] * 3
        for _, file in got:
            assert pydicom.dcmread(io.BytesIO(file)).file_meta.TransferSyntaxUID == syntax


def test_406_404_400_401(archive):
    _, raw, _, series, _ = archive
    ds, mr = series["SEND_RAW"][0], series[MULTIFRAME][0]
    study = f"/studies/{ds.StudyInstanceUID}"
    unknown = "1.2.840.10008.1.2.4.999"
    status, _, body = raw.get(
        study, f"multipart/related; type=application/dicom; transfer-syntax={unknown}"
    )
    assert status == 406 and unknown in json.loads(body)["error"]
    assert raw.get(study, "text/html")[0] == 406
    assert raw.get("/studies/1.2.3.999")[0] == 404
    assert raw.get(f"{study}/series/1.2.3.999")[0] == 404
    assert raw.get(f"{study}/series/{ds.SeriesInstanceUID}/instances/1.2.3.999")[0] == 404
    assert raw.get("/studies/1.2.3.999/metadata")[0] == 404
    mr_path = (
        f"/studies/{mr.StudyInstanceUID}/series/{mr.SeriesInstanceUID}"
        f"/instances/{mr.SOPInstanceUID}"
    )
    # the series exists, but not in this study
    assert raw.get(f"{study}/series/{mr.SeriesInstanceUID}")[0] == 404
    for bad in ("0", "11", "1,0", "x"):
        status, _, body = raw.get(f"{mr_path}/frames/{bad}")
        assert status == 400, bad
        assert "frame" in json.loads(body)["error"]
    assert raw.get(study, auth=False)[0] == 401


# -- frames: only those asked are read and decoded (PS3.5 A.4) ---------------------------------
def counted_decoder(monkeypatch, syntax: str) -> list[int]:
    """Counts the frames the codec table's decoder of ``syntax`` decodes (the decoder
    compacs tries first on what it stored, compacs.codecs.decode)."""
    import compacs.codecs.decode as decode

    calls: list[int] = []
    codec = decode.BY_SYNTAX[syntax]

    def counting(data: bytes, info):
        calls.append(len(data))
        return codec.decode(data, info)

    monkeypatch.setitem(decode.BY_SYNTAX, syntax, dataclasses.replace(codec, decode=counting))
    return calls


def pydicom_frame(frame: bytes, syntax: str, like: Dataset) -> np.ndarray:
    """One frame decoded by pydicom's own decoders: the frame wrapped in a one-frame data
    set with ``like``'s Image Pixel attributes. Native: the samples as they are, in
    ``like``'s shape (a JPEG's YCbCr comes decoded to RGB, as pixel_array gives it)."""
    if not pydicom.uid.UID(syntax).is_encapsulated:
        shape = (
            like.pixel_array.shape[-3:]
            if like.SamplesPerPixel == 3
            else like.pixel_array.shape[-2:]
        )
        return np.frombuffer(frame, like.pixel_array.dtype).reshape(shape)
    one = Dataset()
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = syntax
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel"):
        setattr(one, kw, like[kw].value)
    one.PixelRepresentation = like.PixelRepresentation
    one.PhotometricInterpretation = like.PhotometricInterpretation
    if int(like.SamplesPerPixel) == 3:
        one.PlanarConfiguration = 0
    if pydicom.uid.UID(syntax).is_encapsulated:
        one.add_new(0x7FE00010, "OB", encapsulate([frame]))
    else:
        one.add_new(0x7FE00010, "OW" if like.BitsAllocated > 8 else "OB", bytes(frame))
    return one.pixel_array


def test_frames_decode_only_the_frames_asked(monkeypatch):
    """A 200-frame JPEG-LS object: frames 2 and 7 as stored are its bitstreams (no decode),
    native or in another syntax those two frames are decoded, no other."""
    original = multiframe(200, seed=3)
    stored = transcode(original_bytes(original), codec_for("jpeg-ls")).data
    received = list(
        generate_frames(pydicom.dcmread(io.BytesIO(stored)).PixelData, number_of_frames=200)
    )
    calls = counted_decoder(monkeypatch, JPEG_LS)
    pixels = wado.StoredPixels.open(io.BytesIO(stored))
    assert pixels.count == 200
    for number in (2, 7):  # transfer-syntax=*: the stored bitstream, byte for byte
        assert wado.frame(pixels, number, wado.as_stored(JPEG_LS)) == (
            JPEG_LS,
            received[number - 1],
        )
    assert calls == []
    expected = original.pixel_array
    for number in (2, 7):  # native: that frame decoded alone
        syntax, value = wado.frame(pixels, number, (EXPLICIT_LE,))
        assert syntax == EXPLICIT_LE
        assert np.array_equal(pydicom_frame(value, EXPLICIT_LE, original), expected[number - 1])
    assert len(calls) == 2
    syntax, value = wado.frame(pixels, 7, (J2K,))  # re-encoded (verified): one decode more
    assert syntax == J2K and np.array_equal(pydicom_frame(value, J2K, original), expected[6])
    assert len(calls) == 3


def original_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_frames_2_and_7_of_a_200_frame_object(archive):
    client, raw, sent, series, tmp = archive
    long = series[LONG][0]
    uids = (long.StudyInstanceUID, long.SeriesInstanceUID, long.SOPInstanceUID)
    expected = sent[long.SOPInstanceUID].pixel_array
    native = client.retrieve_instance_frames(*uids, frame_numbers=[2, 7])
    for frame, number in zip(native, (2, 7), strict=True):
        assert np.array_equal(pydicom_frame(frame, EXPLICIT_LE, long), expected[number - 1])
    path = "/studies/{}/series/{}/instances/{}/frames/2,7".format(*uids)
    status, headers, body = raw.get(path, OHIF_FRAMES)
    assert status == 200, body[:200]
    got = parts(headers["Content-Type"], body)
    assert [t for t, _ in got] == [f"image/jls; transfer-syntax={JPEG_LS}"] * 2
    for (_, frame), number in zip(got, (2, 7), strict=True):  # pydicom and DCMTK decode each
        assert np.array_equal(pydicom_frame(frame, JPEG_LS, long), expected[number - 1])
        one = new_uids(long)
        one.NumberOfFrames = 1
        one.file_meta.TransferSyntaxUID = JPEG_LS
        one.PixelData = encapsulate([frame])
        one["PixelData"].VR = "OB"
        assert np.array_equal(dcmdjpls_pixels(one, tmp), expected[number - 1])


# -- transfer-syntax=*: never JPEG XL to a client that did not name it ------------------------
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def dcmdjpeg_frames(ds: Dataset, folder: Path) -> np.ndarray:
    """DCMTK's dcmdjpeg decodes a JPEG Part 10 file; pydicom reads its native output."""
    require_dcmtk()
    src, out = folder / f"{ds.SOPInstanceUID}.jpg.dcm", folder / f"{ds.SOPInstanceUID}.dj.dcm"
    ds.save_as(src, enforce_file_format=True)
    subprocess.run(["dcmdjpeg", str(src), str(out)], check=True, env=dcmtk_env())
    return pydicom.dcmread(out).pixel_array


def test_star_sends_jpeg_xl_jpeg_recompression_as_the_received_jpeg(archive):
    """.4.111 with ``*`` (OHIF's frames, dicomweb-client's instance): the received JPEG
    baseline bitstreams (.4.50), byte for byte, each part naming image/jpeg and .4.50."""
    client, raw, _, series, tmp = archive
    us = series[JPEG_FRAMES][0]
    uids = (us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID)
    received = list(generate_frames(us.PixelData, number_of_frames=120))
    path = "/studies/{}/series/{}/instances/{}".format(*uids)
    status, headers, body = raw.get(f"{path}/frames/2,7", OHIF_FRAMES)
    assert status == 200, body[:200]
    got = parts(headers["Content-Type"], body)
    assert 'type="image/jpeg"' in headers["Content-Type"]
    assert got == [(f"image/jpeg; transfer-syntax={JPEG_BASELINE}", received[n]) for n in (1, 6)]
    got = client.retrieve_instance(*uids)  # dicomweb-client's default: transfer-syntax=*
    assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE
    got_frames = list(generate_frames(got.PixelData, number_of_frames=120))
    assert got_frames == received
    # DCMTK decodes frame 7 as sent and as received alike (one frame: dcmdjpeg is slow)
    one_sent, one_received = new_uids(us), new_uids(us)
    for one, frame in ((one_sent, got_frames[6]), (one_received, received[6])):
        one.NumberOfFrames = 1
        one.add_new(0x7FE00010, "OB", encapsulate([frame]))
    assert np.array_equal(dcmdjpeg_frames(one_sent, tmp), dcmdjpeg_frames(one_received, tmp))
    # a client naming .4.111 gets it
    status, headers, body = raw.get(
        f"{path}/frames/2", f"multipart/related; type=image/jxl; transfer-syntax={RECOMPRESSED}"
    )
    assert status == 200
    ((content_type, _),) = parts(headers["Content-Type"], body)
    assert content_type == f"image/jxl; transfer-syntax={RECOMPRESSED}"


def test_star_sends_jpeg_xl_lossless_as_jpeg_ls(archive):
    """.4.110 with ``*``: JPEG-LS Lossless (.4.80), verified; DCMTK's dcmdjpls and pydicom
    decode it to the original pixels; a client naming .4.110 still gets JPEG XL."""
    client, raw, sent, series, tmp = archive
    ct = series["SEND_JXL"][0]
    expected = sent[ct.SOPInstanceUID].pixel_array
    uids = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    path = "/studies/{}/series/{}/instances/{}".format(*uids)
    status, headers, body = raw.get(f"{path}/frames/1", OHIF_FRAMES)
    assert status == 200, body[:200]
    ((content_type, frame),) = parts(headers["Content-Type"], body)
    assert content_type == f"image/jls; transfer-syntax={JPEG_LS}"
    assert np.array_equal(pydicom_frame(frame, JPEG_LS, ct), expected)
    got = client.retrieve_instance(*uids)  # transfer-syntax=*
    assert got.file_meta.TransferSyntaxUID == JPEG_LS
    assert np.array_equal(dcmdjpls_pixels(got, tmp), expected)
    assert np.array_equal(got.pixel_array, expected)
    accept = f"multipart/related; type=application/dicom; transfer-syntax={JXL_LOSSLESS}"
    status, headers, body = raw.get(path, accept)
    assert status == 200
    ((content_type, file),) = parts(headers["Content-Type"], body)
    assert content_type == f"application/dicom; transfer-syntax={JXL_LOSSLESS}"
    assert pydicom.dcmread(io.BytesIO(file)).file_meta.TransferSyntaxUID == JXL_LOSSLESS


# -- the per-stored-syntax matrix (the dicomweb-client figures) -----------------------
# stored syntax -> (the archive's series, lossless, the explicit syntax asked)
MATRIX = {
    "JPEG-LS lossless .80": ("SEND_JLS", True, J2K),
    "JPEG 2000 lossless .90": ("SEND_J2K", True, JPEG_LS),
    "HTJ2K lossless .201": ("SEND_HTJ2K", True, JPEG_LS),
    "HTJ2K lossless RPCL .202": ("SEND_RPCL", True, JPEG_LS),
    "JPEG XL lossless .110": ("SEND_JXL", True, JPEG_LS),
    "JPEG XL JPEG recompression .111": (JPEG_FILE, True, JPEG_BASELINE),
    "RLE lossless .5": ("SEND_RLE", True, JPEG_LS),
    "native .1.2.1": ("SEND_RAW", True, JPEG_LS),
    "lossy JPEG baseline .50 as received": (LOSSY, False, EXPLICIT_LE),
}
LOSSY_KEYWORDS = (
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)


@pytest.fixture(scope="module")
def figures():
    """The matrix's rows, printed (``-s``) and kept in test-artifacts/ once every row ran."""
    rows: dict[str, tuple[int, int, int]] = {}
    yield rows
    from tests.support.node import ARTIFACTS

    lines = ["stored syntax | stored | found (QIDO) | retrieved bit-exact", "---|---|---|---"]
    lines += [f"{name} | {a} | {b} | {c}" for name, (a, b, c) in rows.items()]
    print("\n" + "\n".join(lines))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dicomweb_wado_matrix.md").write_text("\n".join(lines) + "\n")


def _same(got: Dataset, original: Dataset, lossless: bool) -> bool:
    """pydicom's decode of what came back equals the original's; a lossy object keeps
    its lossy attributes (PS3.3 C.7.6.1.1.5)."""
    if got.SOPInstanceUID != original.SOPInstanceUID:
        return False
    if not lossless and any(got.get(k) != original.get(k) for k in LOSSY_KEYWORDS):
        return False
    return bool(np.array_equal(got.pixel_array, original.pixel_array))


def _frame_equal(frame: bytes, syntax: str, original: Dataset) -> bool:
    expected = original.pixel_array
    if syntax == JPEG_BASELINE:  # the received bitstream itself
        return frame == next(generate_frames(original.PixelData, number_of_frames=1))
    return bool(np.array_equal(pydicom_frame(frame, syntax, original), expected))


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_stored_syntax_retrieved_bit_exact_by_dicomweb_client(archive, figures, name):
    """dicomweb-client stores nothing here (C-STORE did), finds each instance (QIDO-RS) and
    retrieves it as instance, series and study, metadata and frames, in the default, ``*``
    and an explicit syntax: pydicom's decoders give the original pixels (lossless), or the
    lossy object comes back with its lossy attributes and its own pixels."""
    client, raw, sent, series, _ = archive
    key, lossless, explicit = MATRIX[name]
    group = series[key]
    first = group[0]
    study, series_uid = first.StudyInstanceUID, first.SeriesInstanceUID
    found = {
        doc["00080018"]["Value"][0] for doc in client.search_for_instances(study_instance_uid=study)
    }
    exact = 0
    for ds in group:
        original = sent[ds.SOPInstanceUID]
        uids = (study, series_uid, ds.SOPInstanceUID)
        got = [
            client.retrieve_instance(*uids),  # transfer-syntax=*
            client.retrieve_instance(*uids, media_types=(("application/dicom", explicit),)),
            client.retrieve_instance(*uids, media_types=(("application/dicom", EXPLICIT_LE),)),
        ]
        for media_types in (
            None,
            (("application/dicom", "*"),),
            (("application/dicom", explicit),),
        ):
            for many in (
                client.retrieve_series(study, series_uid, media_types=media_types),
                client.retrieve_study(study, media_types=media_types),
            ):
                got += [d for d in many if d.SOPInstanceUID == ds.SOPInstanceUID]
        syntaxes = {str(d.file_meta.TransferSyntaxUID) for d in got}
        assert not syntaxes & wado.JPEG_XL - {explicit}, syntaxes  # never JXL unasked
        (doc,) = [
            d
            for d in client.retrieve_series_metadata(study, series_uid)
            if d["00080018"]["Value"][0] == ds.SOPInstanceUID
        ]
        meta = Dataset.from_json({k: v for k, v in doc.items() if k != "7FE00010"})
        ok = len(got) == 9 and all(_same(d, original, lossless) for d in got)
        ok = ok and all(meta.get(k) == original.get(k) for k in LOSSY_KEYWORDS)
        # frames: native by default, then OHIF's `*` and an explicit syntax (raw HTTP)
        (native,) = client.retrieve_instance_frames(*uids, frame_numbers=[1])
        ok = ok and _frame_equal(native, EXPLICIT_LE, original)
        path = "/studies/{}/series/{}/instances/{}/frames/1".format(*uids)
        frame_type = wado.frame_media_type(explicit)
        for accept in (
            OHIF_FRAMES,
            f"multipart/related; type={frame_type}; transfer-syntax={explicit}",
        ):
            status, headers, body = raw.get(path, accept)
            ((content_type, frame),) = parts(headers["Content-Type"], body)
            syntax = content_type.split("transfer-syntax=")[1]
            assert status == 200 and syntax not in wado.JPEG_XL - {explicit}
            assert content_type.startswith(wado.frame_media_type(syntax))
            ok = ok and _frame_equal(frame, syntax, original)
        exact += ok
    figures[name] = (len(group), len(found & {d.SOPInstanceUID for d in group}), exact)
    assert figures[name] == (len(group), len(group), len(group)), figures[name]
