"""compacs verify, compacs reindex and start-up recovery, against real nodes over TCP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from compacs.dicom.attributes import INDEXED, extract
from compacs.dicom.part10 import file_header
from compacs.dicom.status import Status
from compacs.index import Duplicates, NewInstance, open_index
from compacs.index.sqlite import sqlite_url
from compacs.storage import storage_key
from compacs.storage.base import OWNER_KEY
from compacs.synthetic import ct_series
from tests.support.dcmtk import (
    own_syntax_pairs,
    storescu,
    storescu_profile,
    storescu_until,
)
from tests.support.dicomfiles import EXPECTED_REFUSALS, storage_files, write_files
from tests.support.node import NO_COMPRESSION, NodeProcess, run_cli, write_config
from tests.support.scu import association, dataset_bytes, send_datasets

INGEST_JPEG_LS = '[compression]\nwhen = "ingest"\n'  # the default rule: JPEG-LS lossless


def verify(node, *args: str) -> tuple[int, dict]:
    result = node.cli("verify", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def store_files(data_dir: Path) -> dict[str, Path]:
    store = data_dir / "store"
    return {
        p.relative_to(store).as_posix(): p
        for p in store.rglob("*")
        if p.is_file() and not {".tmp", ".intents"} & set(p.parts) and p.name != OWNER_KEY
    }


def backdate(paths, seconds: float = 120) -> None:
    """As if ``seconds`` had passed since these objects were written."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def index_keys(index: Path) -> dict[str, str]:
    with closing(sqlite3.connect(index)) as conn:
        return dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))


# -- verify --------------------------------------------------------------------------------
def test_verify_finds_damage_missing_objects_and_orphans(node_factory, tmp_path):
    node = node_factory(config=write_config(tmp_path / "jls.toml", INGEST_JPEG_LS))
    series = list(ct_series(8, 64, 64, seed=31))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 8
    keys = index_keys(node.data_dir / "index.sqlite")
    store = node.data_dir / "store"

    code, report = verify(node)  # on the running node
    assert code == 0 and report["clean"], report
    assert (report["instances"], report["objects"], report["decoded"]) == (8, 8, True)
    text = node.cli("verify")
    assert text.returncode == 0 and "clean: no problems found" in text.stdout
    assert "[" in text.stderr and "8/8" in text.stderr  # the progress bar

    # a flipped byte
    victim = str(series[2].SOPInstanceUID)
    path = store / keys[victim]
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-100] ^= 0x01
    path.write_bytes(bytes(damaged))
    code, report = verify(node)
    assert code == 1
    assert [(p["kind"], p["sop_instance_uid"], p["key"]) for p in report["problems"]] == [
        ("digest", victim, keys[victim])
    ]
    text = node.cli("verify")
    assert text.returncode == 1 and victim in text.stdout and "digest 1" in text.stdout
    assert "Synthetic" not in text.stdout + text.stderr  # never patient names or IDs
    assert "SYN0001" not in text.stdout + text.stderr
    path.write_bytes(original)

    # a codestream that no longer decodes, hashed after the damage (a bad encoder)
    victim = str(series[5].SOPInstanceUID)
    path = store / keys[victim]
    original = path.read_bytes()
    sof = original.find(b"\xff\xd8\xff\xf7")  # JPEG-LS SOI + SOF55
    assert sof > 0
    broken = original[: sof + 4] + b"\xff" * 12 + original[sof + 16 :]
    path.write_bytes(broken)
    with closing(sqlite3.connect(node.data_dir / "index.sqlite")) as conn, conn:
        conn.execute(
            "UPDATE instances SET sha256 = ? WHERE sop_instance_uid = ?",
            (hashlib.sha256(broken).hexdigest(), victim),
        )
    code, report = verify(node)
    assert code == 1
    assert [(p["kind"], p["sop_instance_uid"]) for p in report["problems"]] == [
        ("undecodable", victim)
    ]
    assert verify(node, "--no-decode")[0] == 0
    path.write_bytes(original)
    with closing(sqlite3.connect(node.data_dir / "index.sqlite")) as conn, conn:
        conn.execute(
            "UPDATE instances SET sha256 = ? WHERE sop_instance_uid = ?",
            (hashlib.sha256(original).hexdigest(), victim),
        )

    # a deleted object
    victim = str(series[0].SOPInstanceUID)
    path = store / keys[victim]
    original = path.read_bytes()
    path.unlink()
    code, report = verify(node)
    assert code == 1 and report["counts"]["missing"] == 1
    assert [(p["kind"], p["sop_instance_uid"]) for p in report["problems"]] == [("missing", victim)]
    path.write_bytes(original)

    # an extra file: an orphan, deleted by --repair-orphans only once it is old enough
    stray = store / "zz" / "1.2.3" / "1.2.3.4.5.0123456789abcdef.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(original)
    code, report = verify(node)
    assert code == 1
    assert [(p["kind"], p["key"], p["sop_instance_uid"]) for p in report["problems"]] == [
        ("orphan", "zz/1.2.3/1.2.3.4.5.0123456789abcdef.dcm", "1.2.3.4.5")
    ]
    code, report = verify(node, "--repair-orphans")
    assert code == 1 and report["repaired"] == [] and stray.exists()  # too young
    backdate(store_files(node.data_dir).values())  # every object, referenced ones too
    code, report = verify(node, "--repair-orphans")
    assert code == 0 and report["repaired"] == ["zz/1.2.3/1.2.3.4.5.0123456789abcdef.dcm"]
    assert not stray.exists()
    assert set(store_files(node.data_dir)) == set(keys.values())  # nothing referenced went
    code, report = verify(node)
    assert code == 0 and report["clean"]


def test_verify_without_an_index_is_a_usage_error(tmp_path):
    result = run_cli("verify", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no index" in result.stderr


# -- crash recovery --------------------------------------------------------------------------


def test_sigkill_during_ingest_loses_nothing_acknowledged(node_factory, tmp_path):
    """kill -9 while a modality sends and the compression workers run: after a restart
    every acknowledged instance is indexed with a whole object; what the crash left over
    is at most orphans, which verify reports and --repair-orphans deletes."""
    node = node_factory()  # default policy: JPEG-LS in the background
    files = write_files(tmp_path / "series", list(ct_series(1000, 64, 64, seed=33)))

    def kill() -> None:  # SIGKILL: no drain, no clean close
        node.proc.kill()
        node.proc.wait(10)

    acknowledged = storescu_until(node.port, list(files), 500, kill)
    assert not node.is_running() and 500 <= len(acknowledged) < 1000
    tmp = node.data_dir / "store" / ".tmp"
    (tmp / "0123456789abcdef.part").write_bytes(b"\0" * 4096)  # as a kill inside a put leaves

    node.start()
    recovered = re.search(r"start-up recovery: removed (\d+) partial write", node.log())
    assert recovered and int(recovered[1]) >= 1, node.log()[-2000:]
    # the planted leftover is gone (compression resumed meanwhile: its own writes in .tmp
    # may come and go, so the folder itself need not be empty at this moment)
    assert not (tmp / "0123456789abcdef.part").exists()
    deadline = time.monotonic() + 60
    while node.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node.stats()["pending"] == 0
    rows = index_keys(node.data_dir / "index.sqlite")
    assert {files[p] for p in acknowledged} <= set(rows)
    present = len(rows)
    assert node.stop() == 0

    code, report = verify(node)
    assert {p["kind"] for p in report["problems"]} <= {"orphan"}, report["problems"]
    assert code == (1 if report["problems"] else 0)
    backdate(store_files(node.data_dir).values())
    code, report = verify(node, "--repair-orphans")
    assert code == 0 and report["clean"], report
    assert len(report["repaired"]) == report["objects"] - report["instances"]
    assert set(store_files(node.data_dir)) == set(rows.values())
    assert verify(node)[0] == 0

    node.start()
    remaining = [p for p, uid in files.items() if uid not in rows]
    assert len(storescu_until(node.port, remaining, 0, lambda: None)) == len(remaining)
    assert node.stats()["instances"] == 1000
    print(
        f"\nkill -9 during ingest: sent 1000, acknowledged {len(acknowledged)} before the kill, "
        f"present after restart {present} (every acknowledged one), orphans "
        f"{len(report['repaired'])} (repaired), resent {len(remaining)}: 1000 stored"
    )


# -- reindex ---------------------------------------------------------------------------------
# What a rebuilt index must give back exactly: every indexed attribute of every level, and
# what describes the stored object.
_COMPARED = (
    [f"p.{a.column}" for a in INDEXED["PATIENT"]]
    + [f"st.{a.column}" for a in INDEXED["STUDY"]]
    + [f"se.{a.column}" for a in INDEXED["SERIES"]]
    + [f"i.{a.column}" for a in INDEXED["IMAGE"] if a.column != "photometric_interpretation"]
    + ["i.storage_key", "i.sha256", "i.transfer_syntax_stored", "i.bytes_stored", "i.calling_ae"]
)


def photometric(index: Path, transcoded: bool) -> dict[str, str]:
    """Photometric Interpretation per instance stored as received (or transcoded): the
    index keeps the received one, a transcoded file may say another (YBR_RCT -> RGB)."""
    op = "<>" if transcoded else "="
    with closing(sqlite3.connect(index)) as conn:
        return dict(
            conn.execute(
                "SELECT sop_instance_uid, photometric_interpretation FROM instances "
                f"WHERE transfer_syntax_received {op} transfer_syntax_stored"
            )
        )


def instance_rows(index: Path) -> list[tuple]:
    with closing(sqlite3.connect(index)) as conn:
        return sorted(
            conn.execute(
                f"SELECT {', '.join(_COMPARED)} FROM instances i "
                "JOIN series se ON se.pk = i.series_fk JOIN studies st ON st.pk = se.study_fk "
                "JOIN patients p ON p.pk = st.patient_fk"
            ).fetchall(),
            key=repr,
        )


_FIND_LEVELS = {  # level: (model, keys asked beyond the indexed ones)
    "PATIENT": (PatientRootQueryRetrieveInformationModelFind, ["NumberOfPatientRelatedInstances"]),
    "STUDY": (StudyRootQueryRetrieveInformationModelFind, ["ModalitiesInStudy"]),
    "SERIES": (StudyRootQueryRetrieveInformationModelFind, ["NumberOfSeriesRelatedInstances"]),
    "IMAGE": (StudyRootQueryRetrieveInformationModelFind, []),
}


def find_everything(port: int) -> dict[str, list]:
    """Every C-FIND match at every level with universal matching of every indexed key."""
    out = {}
    order = list(_FIND_LEVELS)
    for level, (model, derived) in _FIND_LEVELS.items():
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        first = 0 if level == "PATIENT" else 1
        for above in order[first : order.index(level) + 1]:
            for attr in INDEXED[above]:
                if attr.keyword != "PhotometricInterpretation":  # see photometric()
                    setattr(identifier, attr.keyword, None)
        for keyword in derived:
            setattr(identifier, keyword, None)
        matches = []
        with association(port, [(model, ExplicitVRLittleEndian)]) as assoc:
            for status, found in assoc.send_c_find(identifier, model):
                assert status.Status in (0xFF00, 0x0000), hex(status.Status)
                if status.Status == 0xFF00:
                    matches.append(tuple(sorted((e.keyword, str(e.value)) for e in found)))
        out[level] = sorted(matches)
    return out


def send_with_public_files(port: int, tmp_path: Path, datasets: list[Dataset]) -> None:
    """``datasets``, then pydicom's public files, each in its own transfer syntax, with
    DCMTK storescu; not the damaged fixtures (DCMTK sends some under the data set's UID)."""
    paths = list(write_files(tmp_path / "series", datasets))
    paths += [f.path for f in storage_files() if f.name not in EXPECTED_REFUSALS]
    profile = storescu_profile(tmp_path / "own.cfg", own_syntax_pairs(paths))
    proc, outcomes = storescu(port, paths, profile)
    assert all(o.outcome == "accepted" for o in outcomes[: len(datasets)]), outcomes[:3]
    assert sum(o.outcome == "accepted" for o in outcomes) > 120, proc.stderr[-2000:]


def plant_precompression_copy(store: Path, ds: Dataset) -> str:
    """The uncompressed object of ``ds`` as ingest wrote it, as if a crash had come between
    the compression's index switch and its delete of the original."""
    data = file_header(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "STORESCU"
    ) + dataset_bytes(ds)
    key = storage_key(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        hashlib.sha256(data).hexdigest(),
    )
    path = store / key
    path.write_bytes(data)
    return key


def check_reindex(node_factory, tmp_path: Path, compression: str) -> None:
    config = write_config(tmp_path / "c.toml", f'[compression]\nwhen = "{compression}"\n')
    node = node_factory(config=config)
    series = list(ct_series(10, 64, 64, seed=35))
    send_with_public_files(node.port, tmp_path, series)
    original_index = node.data_dir / "index.sqlite"
    expected_rows = instance_rows(original_index)
    expected_find = find_everything(node.port)
    assert len(expected_rows) > 140 and len(expected_find["IMAGE"]) == len(expected_rows)
    in_use = node.cli("reindex", "--force")
    assert in_use.returncode == 2 and "stop the node" in in_use.stderr
    assert node.stop() == 0

    store = node.data_dir / "store"
    planted = None
    if compression == "ingest":
        first = index_keys(original_index)[str(series[0].SOPInstanceUID)]
        assert first in {r[-5] for r in expected_rows if r[-3] == JPEGLSLossless}
        planted = plant_precompression_copy(store, series[0])

    rebuilt = tmp_path / "rebuilt.sqlite"
    result = node.cli("reindex", "--into", str(rebuilt))
    assert result.returncode == 0, result.stdout + result.stderr
    assert instance_rows(rebuilt) == expected_rows
    as_received = photometric(original_index, transcoded=False)
    assert {k: v for k, v in photometric(rebuilt, False).items() if k in as_received} == as_received
    if planted:
        assert f"orphan       {series[0].SOPInstanceUID}  {planted}" in result.stdout
        assert "1 second copy (orphans)" in result.stdout
    again = node.cli("reindex", "--into", str(rebuilt))
    assert again.returncode == 2 and "exists" in again.stderr

    # C-FIND through a node on the rebuilt index answers as before
    rebuilt_config = write_config(
        tmp_path / "rebuilt.toml",
        f'[index]\nurl = "sqlite:///{rebuilt}"\n'
        f'[storage]\nurl = "{store.resolve().as_uri()}"\n' + NO_COMPRESSION,
    )
    second = node_factory("rebuilt-node", config=rebuilt_config)
    assert find_everything(second.port) == expected_find
    second.stop()

    if compression == "off":  # in place: refused unless forced, then swapped with a backup
        refused = node.cli("reindex")
        assert refused.returncode == 2 and "--force" in refused.stderr
        forced = node.cli("reindex", "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "index.sqlite.bak" in forced.stdout
        assert not Path(f"{original_index}-wal").exists()  # the file alone is the index
        assert instance_rows(original_index) == expected_rows
        assert instance_rows(node.data_dir / "index.sqlite.bak") == expected_rows
        node.start()
        assert find_everything(node.port) == expected_find


def test_reindex_gives_back_the_index_compression_off(node_factory, tmp_path):
    check_reindex(node_factory, tmp_path, "off")


def test_reindex_gives_back_the_index_compression_jpeg_ls(node_factory, tmp_path):
    check_reindex(node_factory, tmp_path, "ingest")


def test_the_index_bulk_loader_leaves_the_whole_index_in_its_file(tmp_path):
    """reindex loads through the index's own entry point (``Catalogue.loader``, issue 18),
    not the backend's statements on a driver connection of its own: what it loaded is in
    the file itself when the load ends (read by SQLite alone, ignoring any WAL), with the
    second copy of an instance replacing the first and the store's identity adopted."""
    path = tmp_path / "loaded.sqlite"
    series = list(ct_series(3, 8, 8, seed=181))

    def new(ds: Dataset, key: str) -> NewInstance:
        return NewInstance(
            attributes=extract(ds),
            storage_key=key,
            transfer_syntax=ExplicitVRLittleEndian,
            bytes_received=10,
            bytes_stored=10,
            sha256="0" * 64,
            calling_ae="A",
            called_ae="COMPACS",
            received_at="2026-01-01T00:00:00+00:00",
        )

    index = open_index(sqlite_url(path))
    try:
        with index.loader() as load:
            load.adopt_identity("the-store-owner")
            first = [(new(ds, f"k/{n}.dcm"), Duplicates.KEEP_FIRST) for n, ds in enumerate(series)]
            assert [r.added for r in load.add(first)] == [True] * 3
            again = load.add([(new(series[0], "k/again.dcm"), Duplicates.REPLACE)])
            assert again[0].obsolete_key == "k/0.dcm"
    finally:
        index.close()
    assert not Path(f"{path}-wal").exists()
    with closing(sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)) as conn:
        keys = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
        owner = conn.execute("SELECT index_id FROM index_identity").fetchall()
    assert keys == {
        str(series[0].SOPInstanceUID): "k/again.dcm",
        str(series[1].SOPInstanceUID): "k/1.dcm",
        str(series[2].SOPInstanceUID): "k/2.dcm",
    }
    assert owner == [("the-store-owner",)]


def test_a_store_belongs_to_one_index(node_factory, tmp_path):
    """Two indexes on one store directory: the second's ``verify --repair-orphans`` took
    every object of the first as an orphan and deleted it. The store is marked with its
    index's identity at first use; another index is refused by serve, verify and repair,
    and a rebuilt index (reindex) takes over the identity of the store it came from."""
    store = tmp_path / "shared-store"
    first = tmp_path / "first.sqlite"
    args = ("--index", f"sqlite:///{first}", "--store", store.as_uri())
    node = node_factory("a", extra_args=args)
    sent = list(ct_series(5, 32, 32, seed=940))
    assert send_datasets(node.port, sent) == [Status.SUCCESS] * 5
    node.stop()
    objects = sorted(p for p in store.rglob("*.dcm"))
    assert len(objects) == 5
    backdate(objects)  # old enough to be deleted as orphans, were they orphans

    second = ("--index", f"sqlite:///{tmp_path / 'second.sqlite'}", "--store", store.as_uri())
    repair = run_cli("verify", "--repair-orphans", "--data-dir", str(tmp_path / "b"), *second)
    assert repair.returncode == 2, repair.stdout + repair.stderr
    assert "belongs to another index" in repair.stderr
    assert sorted(p for p in store.rglob("*.dcm")) == objects  # nothing deleted

    serve = NodeProcess(tmp_path / "b", extra_args=second)
    result = subprocess.run(serve.command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "belongs to another index" in result.stderr

    # rebuilt from the store, an index is the store's own
    rebuilt = tmp_path / "rebuilt.sqlite"
    result = run_cli("reindex", "--into", str(rebuilt), "--data-dir", str(tmp_path / "c"), *args)
    assert result.returncode == 0, result.stderr
    again = ("--index", f"sqlite:///{rebuilt}", "--store", store.as_uri())
    verified = run_cli("verify", "--repair-orphans", "--data-dir", str(tmp_path / "c"), *again)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert sorted(p for p in store.rglob("*.dcm")) == objects
