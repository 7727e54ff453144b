"""JPEG baseline input stored as JPEG XL JPEG Recompression (PS3.5 8.2.15, .4.111) and
given back as received.

A node with its default policy receives JPEG baseline objects (pynetdicom, each file's own
syntax); what it stores is read from its store with pydicom: the .111 syntax, fewer bytes,
every attribute as received (the lossy ones included, PS3.3 C.7.6.1.1.5). DCMTK movescu
then moves them to a DCMTK storescp that prefers JPEG baseline: each frame's JPEG
bitstream arrives byte-identical to the one sent, and DCMTK's own dcmdjpeg decodes it to
the same pixels as the original. A storescp that accepts only uncompressed syntaxes gets
the pixels compacs gets from the received JPEG.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import iter_pixels

from compacs.codecs.pixels import PixelInfo
from compacs.codecs.table import codec_for
from compacs.codecs.transcode import VerificationFailed, recompress
from compacs.codecs.work import Outcome, encode_best
from compacs.dicom.status import Status
from compacs.net.retrieve import target_syntax
from compacs.net.storage_scu import preference
from compacs.web.render import decode_frame, preview_png
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import DicomFile, by_name
from tests.support.node import NodeProcess, write_config
from tests.support.retrieve import StoreSCP, movescu
from tests.support.scu import send_files
from tests.support.stored import stored_syntaxes, wait_for_pending_zero

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RECOMPRESSED = "1.2.840.10008.1.2.4.111"
NATIVE = "1.2.840.10008.1.2.1"
# a corpus of every JPEG flavour pydicom's files hold: 4:2:2 multi-frame US,
# YBR_FULL, RGB without colour transform (APP14), 4:2:2 single frame
RECOMPRESSIBLE = (
    "examples_ybr_color.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
)
GROWS = "SC_rgb_small_odd_jpeg.dcm"  # 3x3: the JPEG XL container outweighs the JPEG


def frames(ds: pydicom.Dataset) -> list[bytes]:
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=count))


def without_pixels(ds: pydicom.Dataset) -> dict[int, object]:
    return {int(e.tag): e.value for e in ds if e.tag != 0x7FE00010}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    require_dcmtk()
    base = tmp_path_factory.mktemp("jpegxl")
    jpeg = StoreSCP(base / "jpeg", "DEST_JPEG", accept_all=False, options=("+xy",))
    unc = StoreSCP(base / "unc", "DEST_UNC", accept_all=False)
    node = NodeProcess(
        base / "data",
        config=write_config(base / "node.toml", "[compression]\ndelay = 0\n"),
        extra_args=(
            "--peer",
            f"DEST_JPEG@127.0.0.1:{jpeg.port}",
            "--peer",
            f"DEST_UNC@127.0.0.1:{unc.port}",
        ),
    )
    try:
        node.start()
        names = (*RECOMPRESSIBLE, GROWS)
        sent = {name: pydicom.dcmread(by_name(name)) for name in names}
        files = [
            DicomFile(by_name(n), str(ds.SOPClassUID), str(ds.SOPInstanceUID), JPEG_BASELINE)
            for n, ds in sent.items()
        ]
        assert send_files(node.port, files) == [Status.SUCCESS] * len(files)
        wait_for_pending_zero(node)
        yield node, sent, jpeg, unc
    finally:
        node.stop()
        jpeg.stop()
        unc.stop()


def stored_files(data_dir: Path) -> dict[str, pydicom.Dataset]:
    """Every object in the node's store, read by pydicom, by SOP Instance UID."""
    out = {}
    for path in (data_dir / "store").rglob("*"):
        if path.is_file() and ".intents" not in path.parts and path.suffix != ".part":
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            out[str(ds.SOPInstanceUID)] = ds
    return out


def test_jpeg_baseline_is_stored_recompressed_with_every_attribute_as_received(archive):
    node, sent, _, _ = archive
    syntaxes = stored_syntaxes(node.data_dir)
    stored = stored_files(node.data_dir)
    for name in RECOMPRESSIBLE:
        original = sent[name]
        uid = str(original.SOPInstanceUID)
        assert syntaxes[uid] == RECOMPRESSED, name
        ds = stored[uid]
        assert ds.file_meta.TransferSyntaxUID == RECOMPRESSED, name
        assert without_pixels(ds) == without_pixels(original), name  # lossy attributes too
        assert ds.LossyImageCompression == "01"
        assert len(ds.PixelData) < len(original.PixelData), name
    # what would grow stays as received (require_smaller)
    assert syntaxes[str(sent[GROWS].SOPInstanceUID)] == JPEG_BASELINE
    stats = node.stats()
    assert stats["by_transfer_syntax"][RECOMPRESSED]["instances"] == len(RECOMPRESSIBLE)


def test_a_peer_that_accepts_jpeg_baseline_gets_the_received_bitstreams(archive, tmp_path):
    node, sent, jpeg, _ = archive
    jpeg.clear()
    studies = {str(ds.StudyInstanceUID) for ds in sent.values()}
    for study in studies:
        result = movescu(node, "DEST_JPEG", study)
        assert result.returncode == 0, result.stderr
    received = jpeg.received()
    for name, original in sent.items():
        got = received[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE, name
        assert frames(got) == frames(original), name  # every byte of every frame
        assert without_pixels(got) == without_pixels(original), name
    # DCMTK's own JPEG decoder reads the restored file as it reads the original
    name = "SC_rgb_jpeg_dcmtk.dcm"
    got = jpeg.folder / next(
        p.name for p in jpeg.folder.iterdir() if str(sent[name].SOPInstanceUID) in p.name
    )
    decoded = {}
    for label, path in (("original", by_name(name)), ("restored", got)):
        out = tmp_path / f"{label}.dcm"
        run = subprocess.run(["dcmdjpeg", str(path), str(out)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        decoded[label] = pydicom.dcmread(out).PixelData
    assert decoded["restored"] == decoded["original"]


def test_an_uncompressed_only_peer_gets_the_pixels_of_the_received_jpeg(archive):
    node, sent, _, unc = archive
    unc.clear()
    name = "SC_rgb_jpeg_app14_dcmd.dcm"  # RGB without colour transform: no YCbCr step
    original = sent[name]
    result = movescu(node, "DEST_UNC", str(original.StudyInstanceUID))
    assert result.returncode == 0, result.stderr
    got = unc.received()[str(original.SOPInstanceUID)]
    assert got.file_meta.TransferSyntaxUID in (NATIVE, "1.2.840.10008.1.2")
    assert got.LossyImageCompression == "01"
    # JPEG decoders may differ by 1 (IDCT): the reference is pydicom with Pillow's
    # libjpeg-turbo, the decoder compacs decodes JPEG baseline with (pylibjpeg differs by
    # 1 in 338 of 196,608 samples here, whether the JPEG was stored or recompressed)
    reference = next(iter_pixels(original, decoding_plugin="pillow"))
    assert np.array_equal(got.pixel_array, reference)


def test_verification_refuses_a_recompression_that_does_not_restore_every_byte():
    data = by_name("SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    codec = codec_for("jpeg-xl-jpeg")

    def one_bit_off(stream: bytes) -> bytes:
        restored = bytearray(codec.restore(stream))
        restored[len(restored) // 2] ^= 1
        return bytes(restored)

    faulty = replace(codec, restore=one_bit_off)
    with pytest.raises(VerificationFailed, match="frame 1 does not restore"):
        recompress(data, faulty)
    outcome = encode_best(data, (faulty,), {}, lossy=False)
    assert outcome.outcome is Outcome.FAILED and "restore" in outcome.note
    assert encode_best(data, (codec,), {}, lossy=False).outcome is Outcome.ENCODED


def test_only_jpeg_baseline_bitstreams_are_recompressed():
    codec = codec_for("jpeg-xl-jpeg")
    for name in ("CT_small.dcm", "JPEG-lossy.dcm"):  # native; 12-bit JPEG extended
        outcome = encode_best(by_name(name).read_bytes(), (codec,), {}, lossy=False)
        assert outcome.outcome is Outcome.FAILED and "JPEG Baseline" in outcome.note, name


def test_forwarding_and_retrieve_offer_the_received_jpeg_next_to_the_stored_syntax():
    jls = "1.2.840.10008.1.2.4.80"
    item = {"transfer_syntax_stored": RECOMPRESSED, "syntaxes": ["stored", jls, NATIVE]}
    assert preference(item) == [RECOMPRESSED, JPEG_BASELINE, jls, NATIVE]
    assert target_syntax(RECOMPRESSED, {JPEG_BASELINE, NATIVE}) == JPEG_BASELINE
    assert target_syntax(RECOMPRESSED, {NATIVE}) == NATIVE
    # nothing else restores to JPEG baseline, and no other object is recompressed on the way
    assert target_syntax(jls, {RECOMPRESSED, NATIVE}) == NATIVE


def test_a_frame_of_a_recompressed_cine_shows_as_its_received_jpeg():
    """The web preview restores the one frame it shows (pydicom decodes it as a .50
    frame) and leaves the stored object's data set as it was."""
    data = by_name("examples_ybr_color.dcm").read_bytes()
    encoded = encode_best(data, (codec_for("jpeg-xl-jpeg"),), {}, lossy=False)
    stored = pydicom.dcmread(BytesIO(encoded.data))
    pixel_data = stored.PixelData
    for index in (0, 17, 29):
        shown = decode_frame(stored, PixelInfo.of(stored), index)
        received = next(iter_pixels(by_name("examples_ybr_color.dcm"), raw=True, indices=[index]))
        assert np.array_equal(shown, received), index
        assert preview_png(encoded.data, index) == preview_png(data, index)
    assert stored.PixelData == pixel_data and stored.NumberOfFrames == 30
    assert stored.file_meta.TransferSyntaxUID == RECOMPRESSED
