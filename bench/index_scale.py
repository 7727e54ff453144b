"""C-FIND latency against index size: compacs' index filled directly, in bulk (1k, 100k,
1M instances: 100 instances a series, one series a study, one study a patient), Orthanc
filled over DICOM at 1k; the same three queries through findscu against both."""

from __future__ import annotations

import hashlib
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.orthanc import OrthancPeer  # the repository root is on PYTHONPATH (Makefile)

from compacs.index.sqlite import SqliteIndex
from compacs.synthetic import UID_ROOT, ct_series
from peers import ENV, Compacs, free_port

PER_SERIES = 100
QUERIES = ("STUDY by PatientID", "IMAGE by SeriesInstanceUID", "PatientName wildcard")


def _uid(kind: str, n: int) -> str:
    return f"{UID_ROOT}9.{kind}.{n}"


def fill(data_dir: Path, instances: int) -> float:
    """Write ``instances`` index rows straight into a fresh compacs SQLite index."""
    start = time.perf_counter()
    SqliteIndex(data_dir / "index.sqlite").close()  # schema and migrations
    studies = max(1, instances // PER_SERIES)
    conn = sqlite3.connect(data_dir / "index.sqlite")
    with conn:
        conn.executemany(
            "INSERT INTO patients (pk, patient_id, patient_name) VALUES (?, ?, ?)",
            ((n + 1, f"PID{n:07d}", f"Patient^{n:07d}") for n in range(studies)),
        )
        conn.executemany(
            "INSERT INTO studies (pk, patient_fk, study_uid, study_date, study_time, "
            "accession_number) VALUES (?, ?, ?, '20260115', '101500', ?)",
            ((n + 1, n + 1, _uid("1", n), f"ACC{n:07d}") for n in range(studies)),
        )
        conn.executemany(
            "INSERT INTO series (pk, study_fk, series_uid, modality, series_number) "
            "VALUES (?, ?, ?, 'CT', '1')",
            ((n + 1, n + 1, _uid("2", n)) for n in range(studies)),
        )
        sha = hashlib.sha256(b"").hexdigest()
        conn.executemany(
            "INSERT INTO instances (series_fk, sop_instance_uid, sop_class_uid, "
            "instance_number, storage_key, transfer_syntax_received, transfer_syntax_stored, "
            "bytes_received, bytes_stored, sha256, calling_ae, called_ae, received_at, "
            "stored_at) VALUES (?, ?, '1.2.840.10008.5.1.4.1.1.2', ?, 'x', "
            "'1.2.840.10008.1.2.1', '1.2.840.10008.1.2.4.80', 525000, 200000, ?, 'BENCH', "
            "'COMPACS', '2026-01-15T10:15:00', '2026-01-15T10:15:00')",
            (
                (n // PER_SERIES + 1, _uid("3", n), str(n % PER_SERIES + 1), sha)
                for n in range(instances)
            ),
        )
    conn.close()
    return time.perf_counter() - start


def _findscu(aet: str, port: int, keys: list[str]) -> float:
    cmd = ["findscu", "-S", "-aet", "BENCH", "-aec", aet]
    for key in keys:
        cmd += ["-k", key]
    start = time.perf_counter()
    subprocess.run([*cmd, "127.0.0.1", str(port)], env=ENV, capture_output=True, check=True)
    return time.perf_counter() - start


def latencies(aet: str, port: int, studies: int) -> dict[str, float]:
    middle = studies // 2
    keys = {
        QUERIES[0]: [
            "QueryRetrieveLevel=STUDY",
            f"PatientID=PID{middle:07d}",
            "StudyInstanceUID",
            "PatientName",
            "StudyDate",
        ],
        QUERIES[1]: [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={_uid('1', middle)}",
            f"SeriesInstanceUID={_uid('2', middle)}",
            "SOPInstanceUID",
        ],
        QUERIES[2]: [
            "QueryRetrieveLevel=STUDY",
            f"PatientName=Patient^{middle:07d}*",
            "StudyInstanceUID",
        ],
    }
    return {
        q: statistics.median(_findscu(aet, port, k) for _ in range(5)) * 1000
        for q, k in keys.items()
    }


def orthanc_at(workdir: Path, instances: int) -> dict[str, float]:
    """Orthanc filled over DICOM with the same shape of data, then the same queries."""
    folder = workdir / "files"
    folder.mkdir(parents=True)
    studies = max(1, instances // PER_SERIES)
    for s in range(studies):
        for i, ds in enumerate(ct_series(PER_SERIES, 8, 8, seed=s)):
            ds.PatientID, ds.PatientName = f"PID{s:07d}", f"Patient^{s:07d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("1", s), _uid("2", s)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid("3", s * 100 + i)
            ds.save_as(folder / f"{s}-{i}.dcm", enforce_file_format=True)
    peer = OrthancPeer(
        workdir / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        modalities={"BENCH": ("BENCH", "127.0.0.1", free_port())},
    )
    peer.start()
    try:
        subprocess.run(
            [
                "storescu",
                "-aet",
                "BENCH",
                "-aec",
                peer.aet,
                "127.0.0.1",
                str(peer.port),
                "+sd",
                str(folder),
            ],
            env=ENV,
            capture_output=True,
            check=True,
        )
        peer.wait_until(instances, timeout=300)
        return latencies(peer.aet, peer.port, studies)
    finally:
        peer.stop()


def index_scale(workdir: Path, sizes: list[int]) -> dict:
    result: dict = {"queries": QUERIES, "compacs": {}, "fill_seconds": {}}
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=workdir.parent) as tmp:
            node = Compacs(Path(tmp), config='[compression]\nwhen = "off"\n')
            node.data.mkdir(parents=True)
            result["fill_seconds"][size] = fill(node.data, size)
            node.start()
            try:
                result["compacs"][size] = latencies(node.aet, node.port, size // PER_SERIES)
            finally:
                node.stop()
        print(f"  index {size:,}: {result['compacs'][size]}", flush=True)
    small = min(sizes)
    result["orthanc"] = {small: orthanc_at(workdir / "orthanc", small)}
    print(f"  Orthanc {small:,}: {result['orthanc'][small]}", flush=True)
    return result
