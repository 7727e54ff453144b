"""The archive tier (issue 16): `compacs compress --archive` re-encodes what the ingest tier
stored with the smallest verified of JPEG-LS / JPEG XL lossless / JPEG 2000, recorded per
instance; stats per codec, modality and tier; the background pass's age rule.

Independent readers: pydicom's own decoders and DCMTK's dcmdjpls on what C-GET returns,
the files on disk counted and summed apart from the index, sqlite3 on the index.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from compacs.config import ConfigError, load
from compacs.dicom.status import Status
from compacs.dicom.syntaxes import name_of
from compacs.index import open_index
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.dicomfiles import DicomFile, by_name
from tests.support.node import NodeProcess, run_cli, write_config
from tests.support.scu import c_get, saved, send_datasets, send_files

FILES = ["CT_small.dcm", "MR_small.dcm", "6154", "US1_UNCR.dcm"]  # 6154: a small CR
SERIES = 8
SIZE = 256  # the series is for behaviour; bench/storage_corpus.py measures the gain
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
EXPLICIT = "1.2.840.10008.1.2.1"
INGEST_THEN_ARCHIVE = '[compression]\nwhen = "ingest"\n'


def _file(name: str) -> DicomFile:
    ds = pydicom.dcmread(by_name(name), stop_before_pixels=True)
    return DicomFile(
        by_name(name), str(ds.SOPClassUID), str(ds.SOPInstanceUID), ds.file_meta.TransferSyntaxUID
    )


def originals() -> dict[str, np.ndarray]:
    """SOP Instance UID -> the original pixels, decoded by pydicom from what was sent."""
    pixels = {_file(n).sop_instance_uid: pydicom.dcmread(by_name(n)).pixel_array for n in FILES}
    for ds in ct_series(SERIES, SIZE, SIZE, seed=16):
        pixels[str(ds.SOPInstanceUID)] = ds.pixel_array
    return pixels


def on_disk(data_dir: Path) -> dict[str, dict]:
    """What the store holds, read from the files (not the index): SOP Instance UID ->
    size, transfer syntax, modality."""
    found = {}
    for path in (data_dir / "store").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(ds.SOPInstanceUID)] = {
            "size": path.stat().st_size,
            "syntax": str(ds.file_meta.TransferSyntaxUID),
            "modality": str(ds.get("Modality", "")),
            "path": path,
        }
    return found


def tiers(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return dict(conn.execute("SELECT sop_instance_uid, tier FROM instances"))


def c_get_all(node: NodeProcess, study_uids: set[str], sop_classes: set[str], folder: Path):
    """C-GET each study by a peer accepting JPEG-LS Lossless, JPEG 2000 Lossless and
    Explicit VR Little Endian: the stored streams it knows, the node's decoding of others."""
    contexts = [(sop_class, [JPEG_LS, J2K, EXPLICIT]) for sop_class in sorted(sop_classes)]
    got = c_get(
        node.port, sorted(study_uids), contexts, aet=node.aet, calling="ARCHGET", timeout=120
    )
    return saved(got, folder)


def dcmdjpls_pixels(path: Path, folder: Path) -> np.ndarray:
    out = folder / f"{path.stem}.dcmdjpls.dcm"
    result = subprocess.run(["dcmdjpls", str(path), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return pydicom.dcmread(out).pixel_array


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """A node storing the files and an 8-slice series as JPEG-LS at ingest, then
    `compacs compress --archive --dry-run` and `compacs compress --archive` (node
    stopped meanwhile), then the node serving again. Yields what was seen at each step."""
    require_dcmtk()
    if shutil.which("dcmdjpls") is None:
        pytest.fail("DCMTK's dcmdjpls is not installed")
    tmp = tmp_path_factory.mktemp("archive")
    config = write_config(tmp / "ingest.toml", INGEST_THEN_ARCHIVE)
    node = NodeProcess(tmp / "data", config=config).start()
    try:
        files = [_file(n) for n in FILES]
        assert send_files(node.port, files) == [Status.SUCCESS] * len(files)
        series = list(ct_series(SERIES, SIZE, SIZE, seed=16))
        assert send_datasets(node.port, series) == [Status.SUCCESS] * SERIES
        node.stop()
        before = {"disk": on_disk(node.data_dir), "stats": node.stats()}
        common = ("--config", str(config), "--data-dir", str(node.data_dir))
        dry = run_cli("compress", "--archive", "--dry-run", "--sample", "0", *common)
        done = run_cli("compress", "--archive", *common)
        again = run_cli("compress", "--archive", "--dry-run", *common)
        stats_text = run_cli("stats", *common)
        after = {"disk": on_disk(node.data_dir), "stats": node.stats()}
        node.start()
        yield {
            "node": node,
            "before": before,
            "after": after,
            "dry": dry,
            "done": done,
            "again": again,
            "stats_text": stats_text,
            "series": series,
            "tmp": tmp,
        }
    finally:
        node.stop()


def test_compress_archive_runs_and_reports(archived):
    done = archived["done"]
    assert done.returncode == 0, done.stdout + done.stderr
    planned = len(FILES) + SERIES
    assert f"{planned} instance(s) to compress" in done.stdout
    assert "failed 0" in done.stdout
    # what the tier ran on is not planned again without --retry
    assert "0 instance(s) to compress" in archived["again"].stdout
    assert f"{planned} already in the archive tier" in archived["again"].stdout


def test_dry_run_says_the_gain_per_modality_and_codec(archived):
    dry = archived["dry"]
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "archive tier would gain (every instance encoded" in dry.stdout
    rows = [line.split() for line in dry.stdout.splitlines() if "MiB ->" in line]
    modalities = {r[0] for r in rows}
    assert {"CT", "MR", "CR", "US"} <= modalities
    assert ["CT", "jpeg-ls"] in [r[:2] for r in rows]  # per modality and stored codec
    # the dry run wrote nothing: the objects were as the ingest tier left them
    assert archived["before"]["stats"]["by_tier"] == {
        "ingest": archived["before"]["stats"]["by_tier"]["ingest"]
    }
    # with every instance encoded, the estimate is what the run then stored
    total = next(line for line in dry.stdout.splitlines() if line.strip().startswith("total"))
    after_mib = float(total.split("->")[1].split("MiB")[0])
    assert after_mib == pytest.approx(archived["after"]["stats"]["bytes_stored"] / 2**20, abs=0.01)


def test_archive_tier_is_bit_exact_over_c_get_in_pydicom_and_dcmdjpls(archived, tmp_path):
    node, disk = archived["node"], archived["after"]["disk"]
    study_uids, sop_classes = set(), set()
    for entry in disk.values():
        ds = pydicom.dcmread(entry["path"], stop_before_pixels=True)
        study_uids.add(str(ds.StudyInstanceUID))
        sop_classes.add(str(ds.SOPClassUID))
    # the tier ran and changed encodings: what is read back is the archive tier's
    assert set(tiers(node.data_dir).values()) == {"archive"}
    assert {e["syntax"] for e in disk.values()} - {JPEG_LS}
    got = c_get_all(node, study_uids, sop_classes, tmp_path)
    expected = originals()
    assert len(got) == len(expected)
    jls = 0
    for path in got:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        assert np.array_equal(ds.pixel_array, expected[uid]), f"{uid}: pydicom"
        if ds.file_meta.TransferSyntaxUID == JPEG_LS:
            jls += 1
            assert np.array_equal(dcmdjpls_pixels(path, tmp_path), expected[uid]), uid
    assert jls > 0  # some stay JPEG-LS (the tier keeps the stored object when smallest)


def test_stored_bytes_do_not_grow_and_the_tier_is_recorded(archived):
    before, after = archived["before"]["disk"], archived["after"]["disk"]
    assert set(before) == set(after)
    for uid in before:
        assert after[uid]["size"] <= before[uid]["size"], uid
    assert sum(e["size"] for e in after.values()) < sum(e["size"] for e in before.values())
    assert set(tiers(archived["node"].data_dir).values()) == {"archive"}
    syntaxes = Counter(e["syntax"] for e in after.values())
    assert "1.2.840.10008.1.2.4.110" in syntaxes  # JPEG XL won somewhere
    report(archived)


def test_stats_per_tier_codec_and_modality_match_the_disk(archived):
    stats, disk = archived["after"]["stats"], archived["after"]["disk"]
    index_bytes = {
        uid: row
        for uid, row in sqlite3.connect(archived["node"].data_dir / "index.sqlite").execute(
            "SELECT sop_instance_uid, bytes_stored FROM instances"
        )
    }
    # the index's byte counts are the files' sizes (Part 10 file as stored)
    assert index_bytes == {uid: e["size"] for uid, e in disk.items()}
    per_codec: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_modality: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in disk.values():
        for table, key in ((per_codec, e["syntax"]), (per_modality, e["modality"])):
            table[key][0] += 1
            table[key][1] += e["size"]
    assert {
        uid: [v["instances"], v["bytes_stored"]] for uid, v in stats["by_transfer_syntax"].items()
    } == dict(per_codec)
    assert {
        m: [v["instances"], v["bytes_stored"]] for m, v in stats["by_modality"].items()
    } == dict(per_modality)
    total = sum(e["size"] for e in disk.values())
    assert stats["by_tier"]["archive"]["instances"] == len(disk)
    assert stats["by_tier"]["archive"]["bytes_stored"] == total
    tier = stats["by_tier"]["archive"]
    assert tier["bytes_saved"] == tier["bytes_received"] - total
    text = archived["stats_text"].stdout
    assert "by tier:" in text and "by codec (stored transfer syntax):" in text
    for uid in per_codec:
        assert name_of(uid) in text


def test_config_errors_name_the_key(tmp_path):
    cases = {
        "after_days = -1": "after_days",
        'after_days = "old"': "after_days",
        'idle = "25:00-06:00"': "idle",
        'idle = "22:00"': "idle",
        'candidates = ["jpeg-baseline"]': "candidates",
        'candidates = ["no-such"]': "candidates",
        "effort = 12": "effort",
        "colour = 1": "colour",
    }
    for line, key in cases.items():  # the loader check-config and serve use, in process
        config = write_config(tmp_path / "bad.toml", f"[compression.archive]\n{line}\n")
        with pytest.raises(ConfigError) as raised:
            load(config)
        message = str(raised.value)
        assert f"[compression.archive] {key}" in message or (
            f"[compression.archive] unknown key '{key}'" in message
        ), (line, message)
    good = write_config(
        tmp_path / "good.toml",
        '[compression.archive]\nafter_days = 30\nidle = "22:00-06:00"\n'
        'candidates = ["jpeg-ls", "jpeg-xl"]\neffort = 9\n',
    )
    result = run_cli("check-config", "--config", str(good))  # and the command says so
    assert result.returncode == 0, result.stderr


def test_age_rule_queues_only_instances_stored_before_after_days(tmp_path):
    """The node's pass queues an instance whose stored time is older than after_days and
    not a new one; its workers then run the archive tier on it."""
    config = write_config(
        tmp_path / "age.toml",
        INGEST_THEN_ARCHIVE + "workers = 1\n[compression.archive]\nafter_days = 30\n",
    )
    node = NodeProcess(tmp_path / "data", config=config).start()
    try:
        files = [_file("CT_small.dcm"), _file("MR_small.dcm")]
        assert send_files(node.port, files) == [Status.SUCCESS] * 2
        node.stop()
        old, new = files[0].sop_instance_uid, files[1].sop_instance_uid
        with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
            conn.execute(
                "UPDATE instances SET stored_at = '2020-01-01T00:00:00.000+00:00' "
                "WHERE sop_instance_uid = ?",
                (old,),
            )
        node.start()
        deadline = time.monotonic() + 60
        while tiers(node.data_dir)[old] != "archive" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tiers(node.data_dir) == {old: "archive", new: "ingest"}, node.log()
        with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
    finally:
        node.stop()
    # what the tier left decodes to the original pixels in pydicom
    stored = on_disk(node.data_dir)[old]
    assert stored["size"] <= files[0].path.stat().st_size
    original = pydicom.dcmread(files[0].path).pixel_array
    if stored["syntax"] != "1.2.840.10008.1.2.4.110":  # pydicom 3.0 has no JPEG XL decoder
        assert np.array_equal(pydicom.dcmread(stored["path"]).pixel_array, original)


def report(archived) -> None:
    """The figures for the report: bytes per modality before and after the tier."""
    before, after = archived["before"]["stats"], archived["after"]["stats"]
    print("\nmodality  received  ingest-tier  archive-tier  archive/ingest")
    for modality, b in before["by_modality"].items():
        a = after["by_modality"][modality]
        print(
            f"{modality:<8} {b['bytes_received']:>10} {b['bytes_stored']:>12} "
            f"{a['bytes_stored']:>12}  {a['bytes_stored'] / b['bytes_stored']:.3f}"
        )
    print(
        f"total    {before['bytes_received']:>10} {before['bytes_stored']:>12} "
        f"{after['bytes_stored']:>12}  {after['bytes_stored'] / before['bytes_stored']:.3f}"
    )


def test_archive_jobs_wait_for_ingest_jobs_and_arriving_stores(tmp_path):
    """The index hands out an archive job only when asked for one (no C-STORE arriving)
    and no ingest job is pending, even one not yet due."""
    node = NodeProcess(
        tmp_path / "data", config=write_config(tmp_path / "i.toml", INGEST_THEN_ARCHIVE)
    ).start()
    files = [_file("CT_small.dcm"), _file("MR_small.dcm")]
    try:
        assert send_files(node.port, files) == [Status.SUCCESS] * 2
    finally:
        node.stop()
    archived, ingest = files[0].sop_instance_uid, files[1].sop_instance_uid
    index = open_index(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        now = time.time()
        assert index.queue_archive("9999-01-01", 10, now) == 2
        with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
            conn.execute(  # the MR's job becomes an ingest job due in an hour
                "UPDATE jobs SET tier = 'ingest', not_before = ? WHERE instance_fk = "
                "(SELECT pk FROM instances WHERE sop_instance_uid = ?)",
                (now + 3600, ingest),
            )
        assert index.claim_jobs("w", 5, now, archive=True) == []  # an ingest job pending
        with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
            conn.execute("DELETE FROM jobs WHERE tier = 'ingest'")
        assert index.claim_jobs("w", 5, now, archive=False) == []  # C-STOREs arriving
        claimed = index.claim_jobs("w", 5, now, archive=True)
        assert [(f["sop_instance_uid"], f["job_tier"]) for f in claimed] == [(archived, "archive")]
    finally:
        index.close()


def test_archive_tier_leaves_jpeg_baseline_input_as_the_ingest_tier_stored_it(tmp_path):
    """A JPEG baseline object (stored bit for bit, or recompressed as .111 by the ingest
    tier) is not decoded and re-encoded losslessly: the tier plans nothing, the file on
    disk stays the same bytes."""
    config = write_config(tmp_path / "i.toml", INGEST_THEN_ARCHIVE)
    node = NodeProcess(tmp_path / "data", config=config).start()
    jpeg = _file("SC_rgb_dcmtk_+eb+cr.dcm")
    try:
        assert send_files(node.port, [jpeg]) == [Status.SUCCESS]
    finally:
        node.stop()
    before = {uid: e["path"].read_bytes() for uid, e in on_disk(node.data_dir).items()}
    common = ("--config", str(config), "--data-dir", str(node.data_dir))
    result = run_cli("compress", "--archive", *common)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 instance(s) to compress" in result.stdout
    assert "lossy input" in result.stdout
    after = {uid: e["path"].read_bytes() for uid, e in on_disk(node.data_dir).items()}
    assert after == before
    assert tiers(node.data_dir) == {jpeg.sop_instance_uid: "ingest"}
