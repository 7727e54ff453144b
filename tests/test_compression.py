"""On-the-fly compression: codecs bit-exact on real files, policy, queue, failure paths."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from compacs.codecs.decode import source_frames
from compacs.codecs.pixels import NotCompressible, PixelInfo, clean
from compacs.codecs.table import CODECS, CodecUnavailable, codec_for
from compacs.codecs.transcode import VerificationFailed, transcode
from compacs.config import from_document
from compacs.dicom.status import Status
from compacs.index import IndexUnavailable
from compacs.ingest import Received
from compacs.jobs.compress import Compressor
from compacs.jobs.pool import WorkerProcesses
from compacs.jobs.workers import CompressionWorkers
from compacs.node import Node
from compacs.rules import DEFAULT_POLICY, RuleError, parse_rule
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import by_name, storage_files
from tests.support.in_process import (
    fixture_archive,  # noqa: F401 (the archive fixture)
    ingest_file,
    run_jobs,
)
from tests.support.node import NO_COMPRESSION, free_port, write_config
from tests.support.procfs import children, cpu_seconds
from tests.support.scu import send_datasets, send_files
from tests.support.stored import stored_syntaxes, wait_for_pending_zero

LOSSLESS = [c for c in CODECS if c.lossless and c.encodes_pixels]

# Real files covering what the codecs must carry: CT (signed 16), MR (signed, 12 in 16),
# CR (unsigned 12/16 bit, large), US RGB, multi-frame RGB, palette colour, YBR_FULL(_422),
# 8-bit, big endian, J2K/JPEG-LS/RLE/JPEG-lossless inputs.
SAMPLES = [
    "CT_small.dcm",
    "693_UNCI.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR2_UNCR.dcm",
    "RG3_UNCI.dcm",
    "US1_UNCR.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_16bit.dcm",
    "OBXXXX1A.dcm",
    "OBXXXX1A_2frame.dcm",
    "examples_palette.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "JPEG-LL.dcm",
    "MR_small_RLE.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "MR2_J2KR.dcm",
    "emri_small.dcm",
    "liver_1frame.dcm",
]


def source_pixels(data: bytes) -> tuple[np.ndarray, PixelInfo]:
    ds = pydicom.dcmread(io.BytesIO(data))
    info = PixelInfo.of(ds)
    return np.stack(list(source_frames(ds, info))), info


def decoded_by_pydicom(data: bytes, info: PixelInfo) -> np.ndarray:
    """Decode independently of compacs' codec table: pydicom and its plugins."""
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = pydicom.pixels.iter_pixels(ds, raw=False)  # YBR_RCT -> RGB
    return np.stack([clean(np.asarray(f).astype(info.dtype), info) for f in frames])


@pytest.mark.parametrize("codec", LOSSLESS, ids=lambda c: c.name)
def test_every_lossless_codec_is_bit_exact_on_real_files(codec):
    encoded_any = 0
    for name in SAMPLES:
        data = by_name(name).read_bytes()
        try:
            out = transcode(data, codec)
        except NotCompressible:
            continue
        except CodecUnavailable:
            assert codec.name in ("jpeg-xl", "htj2k", "htj2k-rpcl"), name  # signed; YBR (HTJ2K)
            continue
        encoded_any += 1
        source, info = source_pixels(data)
        ds = pydicom.dcmread(io.BytesIO(out.data))
        assert ds.file_meta.TransferSyntaxUID == codec.transfer_syntax
        assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        if codec.name == "jpeg-xl":  # pydicom 3 cannot decode JPEG XL; compacs can
            fragments = list(pydicom.encaps.generate_fragmented_frames(ds.PixelData))
            back = np.stack([codec.decode(b"".join(f), info) for f in fragments])
        else:
            back = decoded_by_pydicom(out.data, info)
            if info.samples_per_pixel == 3 and info.photometric != "RGB":
                continue  # pydicom would convert YBR to RGB: compared by the codec below
        assert np.array_equal(back.reshape(source.shape), source), (name, codec.name)
        if info.samples_per_pixel == 3:
            assert ds.PlanarConfiguration == 0
    assert encoded_any >= 12


def test_bits_above_bits_stored_are_masked_before_encoding():
    ds = next(ct_series(1, 32, 32))
    pixels = np.frombuffer(ds.PixelData, np.uint16).copy()
    pixels[::7] |= 0xF000  # garbage above Bits Stored (12), as some peers leave it
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = transcode(buf.getvalue(), codec_for("jpeg-ls"))
    back = pydicom.dcmread(io.BytesIO(out.data)).pixel_array
    assert np.array_equal(back.ravel(), pixels & 0x0FFF)


def test_a_codec_that_corrupts_is_caught_by_verification():
    jls = codec_for("jpeg-ls")
    lying = replace(jls, read_as_others=lambda data, info: jls.decode(data, info) ^ 1)
    with pytest.raises(VerificationFailed):
        transcode(by_name("CT_small.dcm").read_bytes(), lying)


def test_what_the_codecs_cannot_carry_is_not_compressible():
    for name in ("liver.dcm", "reportsi.dcm", "SC_rgb_32bit.dcm"):  # SEG 1-bit, SR, 32-bit
        with pytest.raises(NotCompressible):
            transcode(by_name(name).read_bytes(), codec_for("jpeg-ls"))


# -- policy ------------------------------------------------------------------------------
def test_rules_first_match_wins_and_lossy_needs_consent():
    policy = from_document(
        {
            "compression": {
                "rules": [
                    {"modality": "US", "action": "keep"},
                    {"modality": ["CT", "MR"], "bits_stored": [12], "action": "jpeg-2000"},
                    {"calling_ae": "ARCHIVE", "action": "smallest", "candidates": ["rle", "jls"]},
                    {"action": "htj2k"},
                ]
            }
        }
    ).policy
    base = {
        "photometric_interpretation": "MONOCHROME2",
        "bits_allocated": 16,
        "transfer_syntax_received": ExplicitVRLittleEndian,
    }
    assert policy.decide({**base, "modality": "US"}) is None
    assert (
        policy.decide({**base, "modality": "CT", "bits_stored": 12}).codecs[0].name == "jpeg-2000"
    )
    assert policy.decide({**base, "modality": "CT", "bits_stored": 16}).codecs[0].name == "htj2k"
    smallest = policy.decide({**base, "modality": "CR", "calling_ae": "ARCHIVE"})
    assert [c.name for c in smallest.codecs] == ["rle", "jpeg-ls"]
    # lossy input is kept as received, but for JPEG baseline, whose bitstream JPEG XL
    # recompresses (PS3.5 8.2.15) unless a rule keeps it; no pixels, nothing to do
    assert policy.decide({**base, "transfer_syntax_received": "1.2.840.10008.1.2.4.51"}) is None
    jpeg = {**base, "transfer_syntax_received": "1.2.840.10008.1.2.4.50"}
    assert [c.name for c in policy.decide(jpeg).codecs] == ["jpeg-xl-jpeg"]
    assert policy.decide({**jpeg, "modality": "US"}) is None  # rule 1: keep
    assert replace(policy, recompress_jpeg=False).decide(jpeg) is None
    assert policy.decide({**base, "photometric_interpretation": None}) is None
    with pytest.raises(RuleError, match="lossy = true"):
        parse_rule({"action": "jpeg-ls-near", "near": 2}, "rule")
    with pytest.raises(RuleError, match="no codec"):
        parse_rule({"action": "webp"}, "rule")


# -- the compressor, in process (real files, real SQLite) -------------------------------


def test_smallest_keeps_the_smallest_verified_encoding(archive):
    store, index = archive
    rule = parse_rule({"action": "smallest", "candidates": ["rle", "jpeg-ls", "jpeg-2000"]}, "r")
    policy = replace(DEFAULT_POLICY, rules=(rule,))
    data = by_name("MR2_UNCR.dcm").read_bytes()
    uid = ingest_file(store, index, data, policy)
    stored = store.get(index.locate(uid).storage_key)
    (result,) = run_jobs(store, index, policy)
    sizes = {c.name: len(transcode(stored, c).data) for c in rule.codecs}
    assert result.state == "compressed"
    assert result.bytes_after == min(sizes.values())
    location = index.locate(uid)
    assert location.transfer_syntax_stored == codec_for(min(sizes, key=sizes.get)).transfer_syntax
    assert list(store.keys()) == [location.storage_key]  # the original object is gone


def test_corrupt_codestream_input_fails_and_keeps_the_original(archive):
    store, index = archive
    data = bytearray(by_name("MR_small_jp2klossless.dcm").read_bytes())
    start = data.rfind(b"\xff\x4f\xff\x51")  # J2K SOC+SIZ inside the pixel data
    data[start + 4 : start + 44] = b"\xff" * 40  # wreck the SIZ header, keep the framing
    uid = ingest_file(store, index, bytes(data))
    before = index.locate(uid)
    original = store.get(before.storage_key)
    (result,) = run_jobs(store, index)
    assert result.state == "failed" and "the stream declares 0 x 0 pixels" in result.note
    after = index.locate(uid)
    assert after.storage_key == before.storage_key and store.get(after.storage_key) == original
    assert index.stats()["compression"] == {"failed": 1}
    assert index.stats()["pending"] == 0


def test_a_failing_codec_never_loses_the_original(archive):
    store, index = archive
    uid = ingest_file(store, index, by_name("CT_small.dcm").read_bytes())
    original = store.get(index.locate(uid).storage_key)

    def explode(frame, info, options):
        raise MemoryError("codec blew up")

    jls = codec_for("jpeg-ls")
    broken = replace(jls, encode=explode)
    rule = replace(DEFAULT_POLICY.rules[0], codecs=(broken,))
    policy = replace(DEFAULT_POLICY, rules=(rule,))
    (result,) = run_jobs(store, index, policy)
    assert result.state == "failed" and "codec blew up" in result.note
    assert store.get(index.locate(uid).storage_key) == original


class _ReadOnce:
    """A store whose objects read as they were at their first read (a second worker that
    read the original before the first worker deleted it)."""

    def __init__(self, store) -> None:
        self._store, self._read = store, {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get(self, key):
        if key not in self._read:
            self._read[key] = self._store.get(key)
        return self._read[key]


def test_a_second_compression_of_the_same_instance_keeps_the_object_it_made(archive):
    """Two workers with the same claim (a lease that expired under a slow job, or a finish
    retried after its commit went through) encode to the same content-addressed key: the
    second must not delete, as "belonging to nobody", the object the instance now uses."""
    store, index = archive
    uid = ingest_file(store, index, by_name("CT_small.dcm").read_bytes())
    original = pydicom.dcmread(by_name("CT_small.dcm")).pixel_array
    (claimed,) = index.claim_jobs("a", 1, time.time() + 1e6)
    both_read = _ReadOnce(store)  # both workers read the original before either deleted it
    compressor = Compressor(both_read, index, DEFAULT_POLICY)
    first = compressor.process(claimed)
    second = compressor.process(claimed)  # the same, stale facts: the old key
    assert first.state == second.state == "compressed"
    location = index.locate(uid)
    stored = pydicom.dcmread(io.BytesIO(store.get(location.storage_key)))
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert np.array_equal(stored.pixel_array, original)
    assert list(store.keys()) == [location.storage_key]


class _IndexAway:
    """An index whose first ``failures`` finish_job calls fail as a lost database does."""

    def __init__(self, index, failures: int) -> None:
        self._index, self.failures = index, failures

    def __getattr__(self, name):
        return getattr(self._index, name)

    def finish_job(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise IndexUnavailable("index database unreachable (test)")
        return self._index.finish_job(*args, **kwargs)


def test_a_worker_outlives_an_index_that_cannot_record_its_job(archive):
    """The database goes away while a job is being finished: the worker must neither die
    (its job claimed for the 15-minute lease, one core fewer) nor lose the object; it
    finishes the job once the index answers."""
    store, index = archive
    uid = ingest_file(store, index, by_name("CT_small.dcm").read_bytes())
    original = pydicom.dcmread(by_name("CT_small.dcm")).pixel_array
    away = _IndexAway(index, failures=3)
    policy = replace(DEFAULT_POLICY, delay=0)
    workers = CompressionWorkers(Compressor(store, away, policy), away, count=1, poll=0.05)
    workers.retry_after = 0.05
    workers.start()
    try:
        deadline = time.monotonic() + 30
        while index.stats()["compression"] != {"compressed": 1}:
            assert time.monotonic() < deadline, index.stats()
            assert all(t.is_alive() for t in workers._threads), "the worker died"
            time.sleep(0.05)
    finally:
        workers.stop(10)
    assert away.failures == 0 and index.stats()["pending"] == 0
    stored = pydicom.dcmread(io.BytesIO(store.get(index.locate(uid).storage_key)))
    assert np.array_equal(stored.pixel_array, original)


def test_an_encoding_that_is_not_smaller_is_not_kept(archive):
    store, index = archive
    ds = next(ct_series(1, 64, 64))
    noise = np.random.default_rng(5).integers(0, 4096, size=64 * 64, dtype=np.uint16)
    ds.PixelData = noise.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    uid = ingest_file(store, index, buf.getvalue(), replace(DEFAULT_POLICY))
    rle = parse_rule({"action": "rle"}, "r")  # RLE on noise grows the data
    (result,) = run_jobs(store, index, replace(DEFAULT_POLICY, rules=(rle,)))
    assert result.state == "kept"
    assert index.locate(uid).transfer_syntax_stored == ExplicitVRLittleEndian


def test_objects_without_compressible_pixels_get_no_job(archive):
    store, index = archive
    for name in ("liver.dcm", "reportsi.dcm", "SC_rgb_32bit.dcm", "JPEG-lossy.dcm"):
        ingest_file(store, index, by_name(name).read_bytes())
    assert index.stats()["pending"] == 0


# -- end to end ----------------------------------------------------------------------------


def test_default_policy_compresses_in_the_background_bit_exact(node):
    series = list(ct_series(30, 256, 256, seed=4))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 30
    stats = wait_for_pending_zero(node)
    assert stats["by_transfer_syntax"].keys() == {"1.2.840.10008.1.2.4.80"}
    assert stats["bytes_stored"] < stats["bytes_received"] / 2
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for ds in series[::7]:
        stored = pydicom.dcmread(node.data_dir / "store" / keys[ds.SOPInstanceUID])
        assert np.array_equal(stored.pixel_array, ds.pixel_array)
    on_disk = {
        p.relative_to(node.data_dir / "store").as_posix()
        for p in (node.data_dir / "store").rglob("*.dcm")
    }
    assert on_disk == set(keys.values())  # originals deleted, nothing orphaned


def test_ingest_policy_compresses_before_the_response(node_factory, tmp_path):
    config = write_config(tmp_path / "ingest.toml", '[compression]\nwhen = "ingest"\n')
    node = node_factory(config=config)
    series = list(ct_series(5, 128, 128, seed=8))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 5
    syntaxes = stored_syntaxes(node.data_dir)  # read right after the last Success
    assert set(syntaxes.values()) == {"1.2.840.10008.1.2.4.80"}


def test_deferred_queue_survives_a_restart(node_factory, tmp_path):
    later = write_config(tmp_path / "later.toml", "[compression]\ndelay = 3600\n")
    node = node_factory(config=later)
    series = list(ct_series(8, 128, 128, seed=6))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 8
    assert node.stats()["pending"] == 8
    node.stop()
    assert node.stats()["pending"] == 8  # the queue is in the index, not in memory
    node.config = write_config(tmp_path / "now.toml", "[compression]\ndelay = 0\n")
    node.start()
    # the jobs were due in an hour; after a restart with delay 0 they keep their due time,
    # so compacs compress applies the new policy to the backlog instead
    result = node.cli("compress")
    assert result.returncode == 0, result.stderr
    assert "compressed 8" in result.stdout
    assert node.stats()["pending"] == 0
    assert set(stored_syntaxes(node.data_dir).values()) == {"1.2.840.10008.1.2.4.80"}


def test_compress_command_applies_the_policy_to_what_is_stored(node_factory, tmp_path):
    node = node_factory(config=write_config(tmp_path / "off.toml", NO_COMPRESSION))
    files = [
        f
        for f in storage_files()
        if f.name in {"CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "reportsi.dcm"}
    ]
    assert send_files(node.port, files) == [Status.SUCCESS] * len(files)
    node.stop()
    dry = node.cli("compress", "--dry-run")
    assert dry.returncode == 0 and "3 instance(s) to compress" in dry.stdout
    assert node.stats()["bytes_stored"] == node.stats()["bytes_received"]
    done = node.cli("compress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compressed 3" in done.stdout and "failed 0" in done.stdout
    stats = node.stats()
    assert stats["ratio"] > 1.5
    assert stats["compression"]["compressed"] == 3
    again = node.cli("compress")
    assert "0 instance(s) to compress" in again.stdout


# -- lossy, only where a rule says so ----------------------------------------------------
@pytest.mark.parametrize("keep_original", [True, False])
def test_lossy_rule_makes_a_derived_image(archive, keep_original):
    store, index = archive
    rule = parse_rule(
        {
            "modality": "CT",
            "action": "jpeg-ls-near",
            "near": 2,
            "lossy": True,
            "keep_original": keep_original,
        },
        "r",
    )
    policy = replace(DEFAULT_POLICY, rules=(rule,))
    data = by_name("CT_small.dcm").read_bytes()
    uid = ingest_file(store, index, data, policy)
    (result,) = run_jobs(store, index, policy)
    assert result.state == "derived"
    (derived_uid,) = [
        f["sop_instance_uid"] for f in index.instances() if f["sop_instance_uid"] != uid
    ]
    derived = pydicom.dcmread(io.BytesIO(store.get(index.locate(derived_uid).storage_key)))
    original = pydicom.dcmread(io.BytesIO(data))
    # PS3.3 C.7.6.1.1.5 and C.7.6.1.1.3
    assert derived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.81"
    assert derived.SOPInstanceUID != original.SOPInstanceUID
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(derived.LossyImageCompressionRatio) > 2
    assert derived.ImageType[0] == "DERIVED"
    assert "jpeg-ls-near" in derived.DerivationDescription
    assert derived.DerivationCodeSequence[0].CodeValue == "113040"
    source = derived.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
    error = np.abs(derived.pixel_array.astype(int) - original.pixel_array.astype(int)).max()
    assert 0 < error <= 2
    assert (index.locate(uid) is not None) is keep_original
    assert len(list(store.keys())) == (2 if keep_original else 1)
    # a lossy image is never compressed again, and its attributes are never reset
    assert run_jobs(store, index, policy) == []


def test_lossy_attributes_are_appended_not_overwritten():
    from compacs.codecs.lossy import derive

    ds = pydicom.dcmread(by_name("CT_small.dcm"))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = "5.0"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out, _ = derive(buf.getvalue(), codec_for("jpeg-ls-near"), {"near": 1})
    again = pydicom.dcmread(io.BytesIO(out.data))
    assert again.LossyImageCompressionMethod == ["ISO_10918_1", "ISO_14495_1"]
    assert len(again.LossyImageCompressionRatio) == 2 and again.LossyImageCompression == "01"


@pytest.mark.parametrize(
    ("rule", "method", "name"),
    [
        ({"action": "jpeg-2000-lossy", "ratio": 10}, "ISO_15444_1", "MR2_UNCR.dcm"),
        ({"action": "htj2k-lossy", "ratio": 10}, "ISO_15444_15", "MR2_UNCR.dcm"),
        ({"action": "jpeg-2000-lossy", "ratio": 10}, "ISO_15444_1", "US1_UNCR.dcm"),
        ({"action": "jpeg-baseline", "quality": 85}, "ISO_10918_1", "US1_UNCR.dcm"),
    ],
)
def test_lossy_codecs_reach_their_target_and_are_marked(archive, rule, method, name):
    store, index = archive
    policy = replace(DEFAULT_POLICY, rules=(parse_rule({**rule, "lossy": True}, "r"),))
    data = by_name(name).read_bytes()
    uid = ingest_file(store, index, data, policy)
    (result,) = run_jobs(store, index, policy)
    assert result.state == "derived", result.note
    (derived_uid,) = [
        f["sop_instance_uid"] for f in index.instances() if f["sop_instance_uid"] != uid
    ]
    derived = pydicom.dcmread(io.BytesIO(store.get(index.locate(derived_uid).storage_key)))
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == method
    ratio = float(derived.LossyImageCompressionRatio)
    if "ratio" in rule:
        assert rule["ratio"] * 0.9 <= ratio <= rule["ratio"] * 1.5
    original = pydicom.dcmread(io.BytesIO(data)).pixel_array.astype(int)
    error = np.abs(derived.pixel_array.astype(int) - original)
    assert error.max() > 0 and error.mean() < 10  # lossy, but an image, not noise


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "693_UNCR.dcm",
        "MR2_UNCR.dcm",
        "emri_small.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_splicing_the_pixel_data_equals_a_full_rewrite(name):
    """The fast path (received bytes, Pixel Data element replaced) writes the same data
    set as pydicom's full re-encoding."""
    from compacs.codecs.transcode import (
        SourceLayout,
        _splice,
        _write,
        encode_frames,
        read_dataset,
        read_full,
    )
    from compacs.dicom.byteorder import to_little_endian

    data = by_name(name).read_bytes()
    jls = codec_for("jpeg-ls")
    ds = read_dataset(data)
    source = SourceLayout.of(ds)
    to_little_endian(ds)
    fragments, info = encode_frames(ds, jls, {})
    spliced = _splice(data, ds, source, fragments, info, jls)
    if 0x7FE00000 in ds:  # a Pixel Data group length would be falsified: full rewrite
        assert spliced is None
        return
    assert spliced is not None
    written = _write(read_full(data), fragments, info, jls).data
    a, b = pydicom.dcmread(io.BytesIO(spliced)), pydicom.dcmread(io.BytesIO(written))
    for ds in (a, b):  # pydicom drops retired group lengths; the splice keeps valid ones
        for elem in [e for e in ds if e.tag.element == 0]:
            del ds[elem.tag]
    assert a == b
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID == jls.transfer_syntax
    assert np.array_equal(a.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    assert transcode(data, jls).data == spliced


# -- where the work runs (issue 15) ---------------------------------------------------------
def test_the_node_encodes_and_verifies_in_worker_processes(node, tmp_path):
    """The CPU part of each job (parse, encode, verify, encapsulate, hash) runs in the
    node's worker processes, not in the threads of the node that receive."""
    require_dcmtk()
    workers = [pid for child in children(node.proc.pid) for pid in children(child)]
    assert len(workers) == 2  # [compression] workers = 2 by default
    before = sum(cpu_seconds(pid) for pid in workers)
    series = list(ct_series(12, seed=21))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 12
    assert wait_for_pending_zero(node)["compression"] == {"compressed": 12}
    in_workers = sum(cpu_seconds(pid) for pid in workers) - before
    start = time.process_time()  # the same jobs' CPU part, here, for scale
    for ds in series:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        transcode(buf.getvalue(), codec_for("jpeg-ls"))
    alone = time.process_time() - start
    print(f"\nCPU in the worker processes {in_workers:.2f} s; the same jobs here {alone:.2f} s")
    assert in_workers > alone / 2
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        rows = conn.execute("SELECT sop_instance_uid, storage_key, sha256 FROM instances")
        stored = {uid: (key, digest) for uid, key, digest in rows}
    for ds in series:  # DCMTK decodes the result; the index's hash is the file's
        key, digest = stored[str(ds.SOPInstanceUID)]
        path = node.data_dir / "store" / key
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        out = tmp_path / "out.dcm"
        done = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(pydicom.dcmread(out).pixel_array, ds.pixel_array)


def test_ingest_policy_encodes_the_received_bytes_without_reading_them_back(
    tmp_path, monkeypatch, restore_pynetdicom_config
):
    """Policy "ingest": the bytes just received and written are still in memory; the
    compression encodes those, with no second read of the stored object."""
    settings = from_document(
        {
            "node": {"data_dir": str(tmp_path / "data"), "host": "127.0.0.1", "port": free_port()},
            "http": {"port": 0},
            "compression": {"when": "ingest", "workers": 1},
        }
    )
    node = Node(settings)
    reads: list[str] = []
    get = node.store.get
    monkeypatch.setattr(node.store, "get", lambda key: reads.append(key) or get(key))
    series = list(ct_series(3, 128, 128, seed=22))
    try:
        for ds in series:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
            body = data[132 + 12 + int.from_bytes(data[140:144], "little") :]
            received = Received(
                body, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "T", "COMPACS"
            )
            assert node.ingest.receive(received).ok
    finally:
        node._shutdown()
    assert reads == []
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for ds in series:  # pydicom's own JPEG-LS decoder reads what was stored
        stored = pydicom.dcmread(tmp_path / "data" / "store" / keys[str(ds.SOPInstanceUID)])
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        assert np.array_equal(stored.pixel_array, ds.pixel_array)


def test_no_workers_means_no_worker_process_and_ingest_still_compresses(node_factory, tmp_path):
    """``[compression] workers = 0`` keeps its meaning: no background workers (so no
    worker process); policy "ingest" compresses in the receiving thread."""
    config = write_config(tmp_path / "zero.toml", '[compression]\nwhen = "ingest"\nworkers = 0\n')
    node = node_factory(config=config)
    assert children(node.proc.pid) == []
    series = list(ct_series(3, 128, 128, seed=23))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 3
    syntaxes = stored_syntaxes(node.data_dir)  # read right after the last Success
    assert set(syntaxes.values()) == {"1.2.840.10008.1.2.4.80"}
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for ds in series:
        stored = pydicom.dcmread(node.data_dir / "store" / keys[str(ds.SOPInstanceUID)])
        assert np.array_equal(stored.pixel_array, ds.pixel_array)


def _dcmdjpls_pixels(data: bytes, tmp_path: Path) -> np.ndarray:
    """DCMTK's decoding of the Part 10 file ``data`` (an independent reader)."""
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(data)
    done = subprocess.run(["dcmdjpls", str(src), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return pydicom.dcmread(out).pixel_array


def test_native_frames_are_read_without_pydicoms_decoders(tmp_path, monkeypatch):
    """Native little endian source frames come straight from the Pixel Data bytes (issue
    15: no pixel decoder set-up in the worker's job); DCMTK and pydicom decode the result
    to the original pixels, signed CT and unsigned 8-bit alike."""
    require_dcmtk()
    originals = [*ct_series(2, seed=31), pydicom.dcmread(by_name("OBXXXX1A.dcm"))]
    files = []
    for ds in originals:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append((buf.getvalue(), ds.pixel_array))

    def no_decoder(*args, **kwargs):
        raise AssertionError("pydicom's pixel decoders ran for native source frames")

    monkeypatch.setattr("compacs.codecs.decode.iter_pixels", no_decoder)
    for data, pixels in files:
        encoded = transcode(data, codec_for("jpeg-ls"))
        assert encoded.transfer_syntax == "1.2.840.10008.1.2.4.80"
        assert np.array_equal(_dcmdjpls_pixels(encoded.data, tmp_path), pixels)
        assert np.array_equal(pydicom.dcmread(io.BytesIO(encoded.data)).pixel_array, pixels)


def test_a_job_crosses_to_the_worker_process_without_helper_threads(tmp_path):
    """The thread that holds a lane talks to its worker process over the pipe itself: no
    feeder or result-manager thread per lane in the node (issue 15), and the job's
    result, spooled by the worker, decodes with DCMTK to the original pixels."""
    require_dcmtk()
    ds = next(iter(ct_series(1, seed=32)))
    source = tmp_path / "ct.dcm"
    ds.save_as(source, enforce_file_format=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = WorkerProcesses(2)
    threads = {t.name for t in threading.enumerate()}
    try:
        pool.start()
        encoding = pool.encode(str(source), (codec_for("jpeg-ls"),), {}, False, str(spool))
        grown = {t.name for t in threading.enumerate()} - threads
    finally:
        pool.close(10)
    assert grown == set(), grown
    data = Path(encoding.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == encoding.sha256
    assert np.array_equal(_dcmdjpls_pixels(data, tmp_path), ds.pixel_array)


def test_what_a_job_raises_in_the_worker_is_raised_not_a_dead_worker(tmp_path):
    """A job's own OSError (its source gone) comes back as that error; the worker process
    lives on for the next job, which it encodes (DCMTK decodes it to the original). Only a
    process that ends before it replies is "worker process died"."""
    require_dcmtk()
    ds = next(iter(ct_series(1, 64, 64, seed=33)))
    source = tmp_path / "ct.dcm"
    ds.save_as(source, enforce_file_format=True)
    jls = (codec_for("jpeg-ls"),)
    pool = WorkerProcesses(1)
    try:
        pool.start()
        (pid,) = pool.pids()
        with pytest.raises(FileNotFoundError):
            pool.encode(str(tmp_path / "gone.dcm"), jls, {}, False)
        encoding = pool.encode(str(source), jls, {}, False)
        assert pool.pids() == [pid]
    finally:
        pool.close(10)
    assert np.array_equal(_dcmdjpls_pixels(encoding.data, tmp_path), ds.pixel_array)


def test_while_c_stores_arrive_one_worker_compresses(node):
    """Issue 15: receiving comes first (jobs/workers.py): while a sender's C-STOREs
    arrive, at most one compression job runs, so the receiving threads keep a core; once
    it pauses the backlog is compressed, every instance bit-exact (DCMTK dcmdjpls)."""
    require_dcmtk()
    series = list(ct_series(60, seed=22))
    claimed_at_once: list[int] = []
    sending = threading.Event()
    sending.set()

    def watch() -> None:  # the index's claims, read-only, while the sender runs
        uri = f"file:{node.data_dir / 'index.sqlite'}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            while sending.is_set():
                sql = "SELECT COUNT(*) FROM jobs WHERE claimed_by IS NOT NULL"
                claimed_at_once.append(conn.execute(sql).fetchone()[0])
                time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        statuses = send_datasets(node.port, series)
    finally:
        sending.clear()
        watcher.join()
    assert statuses == [Status.SUCCESS] * 60
    most = max(claimed_at_once)
    print(f"\n{len(claimed_at_once)} looks at the claims while sending: at most {most}")
    assert max(claimed_at_once) == 1  # one job at a time, and jobs did run meanwhile
    assert wait_for_pending_zero(node)["compression"] == {"compressed": 60}
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for ds in series[::10]:
        out = node.data_dir.parent / "out.dcm"
        path = node.data_dir / "store" / keys[str(ds.SOPInstanceUID)]
        done = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(pydicom.dcmread(out).pixel_array, ds.pixel_array)


def test_a_compression_job_wakes_no_forwarder_without_a_route_that_waits(
    tmp_path, monkeypatch, restore_pynetdicom_config
):
    """With no route that waits for compression, a finished job does not send the
    forwarder threads to the queue (each look is a write transaction of the index, two
    per job before, issue 15): they look once a second, as when idle. The instances end
    compressed, bit-exact (pydicom's JPEG-LS decoder)."""
    settings = from_document(
        {
            "node": {"data_dir": str(tmp_path / "data"), "host": "127.0.0.1", "port": free_port()},
            "http": {"port": 0},
        }
    )
    node = Node(settings)
    looks: list[float] = []
    claim = node.index.claim_forwards
    monkeypatch.setattr(
        node.index, "claim_forwards", lambda *a: looks.append(time.monotonic()) or claim(*a)
    )
    serving = threading.Thread(target=node.serve_forever)
    serving.start()
    series = list(ct_series(40, 64, 64, seed=35))
    try:
        start = time.monotonic()
        assert send_datasets(settings.port, series) == [Status.SUCCESS] * 40
        index = f"file:{tmp_path / 'data' / 'index.sqlite'}?mode=ro"
        with closing(sqlite3.connect(index, uri=True)) as conn:
            while conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]:
                time.sleep(0.05)
        elapsed = time.monotonic() - start
        during = [t for t in looks if t >= start]
    finally:
        node.stop()
        serving.join(60)
    threads = 2  # the node's forwarder threads with one association per destination
    print(f"\n40 jobs in {elapsed:.1f} s: {len(during)} looks at the forwarding queue")
    assert len(during) <= threads * (elapsed / 1.0 + 2)
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
    for ds in series[::13]:
        stored = pydicom.dcmread(tmp_path / "data" / "store" / keys[str(ds.SOPInstanceUID)])
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        assert np.array_equal(stored.pixel_array, ds.pixel_array)
