"""Patient identity in the index (issue 13, item C): C-FIND answers each study with its own
patient attributes, and an empty Patient ID identifies nobody.

The queries go through DCMTK's findscu against a real node (SQLite and PostgreSQL
indexes); findscu's responses (``-X``) are compared with the values the test sent.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from compacs.dicom.attributes import extract
from compacs.dicom.status import Status
from compacs.index import Duplicates, open_index
from compacs.index.schema import POSTGRESQL, SQLITE, Dialect, migrations
from compacs.index.sqlite import SqliteIndex
from compacs.query import PATIENT_ROOT, parse_identifier
from compacs.storage.base import OWNER_KEY
from compacs.synthetic import ct_series
from tests.support.dcmtk import findscu_run, require_dcmtk
from tests.support.node import NO_COMPRESSION, NodeProcess, write_config
from tests.support.records import new_instance
from tests.support.scu import send_datasets

ABSENT = None  # the instance has no Patient ID element at all


@dataclass(frozen=True)
class Study:
    label: str
    patient_id: str | None
    name: str
    issuer: str | None = None


# Sent in this order. The first five have no Patient ID: five people, not one.
STUDIES = (
    Study("anon-citizen-1", ABSENT, "Citizen^Jan"),
    Study("anon-empty", "", ""),
    Study("anon-carets", ABSENT, "^^^^"),
    Study("anon-test", "", "Test^S R"),
    Study("anon-citizen-2", "", "Citizen^Jan"),
    # one Patient ID, renamed between two studies: the second is the latest received
    Study("renamed-before", "SHARED1", "Renamed^Before"),
    Study("renamed-after", "SHARED1", "Renamed^After"),
    # one Patient ID issued by two sites: two people (PS3.3 C.7.1.1, Issuer of Patient ID)
    Study("site-a", "COLLIDE", "Alpha^Site", "SITE_A"),
    Study("site-b", "COLLIDE", "Beta^Site", "SITE_B"),
)
EMPTY_ID = [s for s in STUDIES if not s.patient_id]


def datasets(studies=STUDIES, per_study: int = 2) -> tuple[list[Dataset], dict[str, Study]]:
    """Two instances per study, and the study each Study Instance UID stands for."""
    out, by_uid = [], {}
    for n, study in enumerate(studies):
        series = list(ct_series(per_study, 8, 8, seed=900 + 7 * n, patient_id=study.label))
        for ds in series:
            ds.PatientName = study.name
            if study.patient_id is ABSENT:
                del ds.PatientID
            else:
                ds.PatientID = study.patient_id
            if study.issuer is not None:
                ds.IssuerOfPatientID = study.issuer
        by_uid[str(series[0].StudyInstanceUID)] = study
        out += series
    return out, by_uid


def findscu(node: NodeProcess, out: Path, model: str, *keys: str) -> list[Dataset]:
    """DCMTK findscu's responses (-X: one file per match), read back with pydicom."""
    require_dcmtk()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    findscu_run(node, "-X", "-od", str(out), model, keys=keys)
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


STUDY_KEYS = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", "PatientName")
PATIENT_KEYS = (
    "QueryRetrieveLevel=PATIENT",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "NumberOfPatientRelatedStudies",
)


def studies_named(node: NodeProcess, out: Path, name: str) -> list[Dataset]:
    return findscu(node, out, "-S", *STUDY_KEYS, f"PatientName={name}")


def names(found: list[Dataset]) -> Counter:
    return Counter(str(ds.get("PatientName", "") or "") for ds in found)


def check_study_level(node: NodeProcess, out: Path, by_uid: dict[str, Study]) -> None:
    """Study Root STUDY level: matching and returned values are the study's own."""
    every = findscu(node, out, "-S", *STUDY_KEYS)
    assert len(every) == len(STUDIES)
    for ds in every:
        study = by_uid[str(ds.StudyInstanceUID)]
        assert str(ds.get("PatientName", "") or "") == study.name, study.label
        assert str(ds.get("PatientID", "") or "") == (study.patient_id or ""), study.label

    citizens = studies_named(node, out, "Citizen^Jan")
    assert {by_uid[str(ds.StudyInstanceUID)].label for ds in citizens} == {
        "anon-citizen-1",
        "anon-citizen-2",
    }
    assert names(citizens) == Counter({"Citizen^Jan": 2})
    tests = studies_named(node, out, "Test*")
    assert [by_uid[str(ds.StudyInstanceUID)].label for ds in tests] == ["anon-test"]
    assert names(tests) == Counter({"Test^S R": 1})
    # a renamed patient: each study answers, and is found by, its own name
    for label, name in (("renamed-before", "Renamed^Before"), ("renamed-after", "Renamed^After")):
        found = studies_named(node, out, name)
        assert [by_uid[str(ds.StudyInstanceUID)].label for ds in found] == [label]
        assert names(found) == Counter({name: 1})


def check_patient_level(node: NodeProcess, out: Path) -> None:
    """Patient Root PATIENT level: one patient per study without a Patient ID; a Patient ID
    is qualified by its issuer; a patient answers (and matches) its latest received name."""
    every = findscu(node, out, "-P", *PATIENT_KEYS)
    anonymous = [ds for ds in every if not str(ds.get("PatientID", "") or "")]
    assert len(anonymous) == len(EMPTY_ID)
    assert names(anonymous) == Counter(s.name for s in EMPTY_ID)
    assert all(int(ds.NumberOfPatientRelatedStudies) == 1 for ds in anonymous)

    shared = findscu(node, out, "-P", *PATIENT_KEYS, "PatientID=SHARED1")
    assert [(str(ds.PatientName), int(ds.NumberOfPatientRelatedStudies)) for ds in shared] == [
        ("Renamed^After", 2)
    ]
    assert findscu(node, out, "-P", *PATIENT_KEYS, "PatientName=Renamed^Before") == []
    assert len(findscu(node, out, "-P", *PATIENT_KEYS, "PatientName=Renamed^After")) == 1

    collide = findscu(node, out, "-P", *PATIENT_KEYS, "PatientID=COLLIDE")
    assert sorted((str(ds.IssuerOfPatientID), str(ds.PatientName)) for ds in collide) == [
        ("SITE_A", "Alpha^Site"),
        ("SITE_B", "Beta^Site"),
    ]
    assert len(every) == len(EMPTY_ID) + 1 + 2


@pytest.fixture(params=["sqlite", "postgresql"])
def index_args(request) -> tuple[str, ...]:
    if request.param == "sqlite":
        return ()
    return ("--index", request.getfixturevalue("postgres").database())


def test_findscu_answers_every_study_with_its_own_patient(index_args, tmp_path):
    config = write_config(tmp_path / "plain.toml", NO_COMPRESSION)
    node = NodeProcess(tmp_path / "data", config=config, extra_args=index_args).start()
    try:
        sent, by_uid = datasets()
        assert send_datasets(node.port, sent) == [Status.SUCCESS] * len(sent)
        check_study_level(node, tmp_path / "rsp", by_uid)
        check_patient_level(node, tmp_path / "rsp")
    finally:
        node.stop()


# -- an index of schema 3, where every study without a Patient ID shared one patient -----


def _schema_3(conn, dialect: Dialect, ph: str, sent: list[Dataset]) -> None:
    """Schema 1-3 as compacs made it, filled as version 3 filed studies: patients keyed by
    Patient ID alone, the first-received instance's values standing."""
    cur = conn.cursor()
    cur.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2, 3):
        for statement in migrations(dialect)[version]:
            cur.execute(statement)
        cur.execute(f"INSERT INTO schema_version (version) VALUES ({ph})", (version,))
    for ds in sent:
        attrs = extract(ds)
        patient, study = attrs["PATIENT"], attrs["STUDY"]
        cur.execute(f"SELECT pk FROM patients WHERE patient_id = {ph}", (patient["patient_id"],))
        if cur.fetchone() is None:
            columns = list(patient)
            cur.execute(
                f"INSERT INTO patients ({', '.join(columns)}) "
                f"VALUES ({', '.join(ph for _ in columns)})",
                [patient[c] for c in columns],
            )
        cur.execute(f"SELECT pk FROM studies WHERE study_uid = {ph}", (study["study_uid"],))
        if cur.fetchone() is None:
            columns = list(study)
            cur.execute(
                f"INSERT INTO studies (patient_fk, {', '.join(columns)}) "
                f"SELECT pk, {', '.join(ph for _ in columns)} FROM patients "
                f"WHERE patient_id = {ph}",
                [*(study[c] for c in columns), patient["patient_id"]],
            )
    conn.commit()
    conn.close()


def _patients(index, **keys: str) -> list[dict]:
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    for keyword, value in keys.items():
        setattr(ident, keyword, value)
    ident.NumberOfPatientRelatedStudies = None
    return list(index.find(parse_identifier(ident, PATIENT_ROOT)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schema_3_is_migrated_to_one_patient_per_study_without_patient_id(
    backend, request, tmp_path
):
    """The migration parts the merged patient: each study without Patient ID gets a patient
    of its own (their names are still the merged row's: only the objects know better, and
    `compacs reindex` reads them, see the next test); new studies are filed apart."""
    latin = Study("latin", "MÜLLER-1", "Müller^Jörg", "KRANKENHAUS")  # key: LENGTH in chars
    sent, _ = datasets((*STUDIES, latin), per_study=1)
    if backend == "sqlite":
        path = tmp_path / "index.sqlite"
        _schema_3(sqlite3.connect(path), SQLITE, "?", sent)
        open_migrated = lambda: SqliteIndex(path)  # noqa: E731
    else:
        import psycopg

        url = request.getfixturevalue("postgres").database()
        _schema_3(psycopg.connect(url), POSTGRESQL, "%s", sent)
        open_migrated = lambda: open_index(url)  # noqa: E731
    index = open_migrated()
    try:
        every = _patients(index, PatientID="", PatientName="")
        anonymous = [row for row in every if not row["patient_id"]]
        assert len(anonymous) == len(EMPTY_ID)
        assert all(row["NumberOfPatientRelatedStudies"] == 1 for row in anonymous)
        assert {row["patient_name"] for row in anonymous} == {"Citizen^Jan"}  # merged row's
        # new studies: another one without Patient ID, the second site's COLLIDE
        more, _ = datasets(
            (
                Study("anon-new", "", "New^Person"),
                Study("site-b", "COLLIDE", "Beta^Site", "SITE_B"),
            ),
            per_study=1,
        )
        more[0].StudyInstanceUID = "1.2.826.0.1.3680043.10.1010.13.1"
        more[1].StudyInstanceUID = "1.2.826.0.1.3680043.10.1010.13.2"
        for ds in more:
            assert index.add_instance(new_instance(ds), Duplicates.KEEP_FIRST).added
        assert len([r for r in _patients(index) if not r["patient_id"]]) == len(EMPTY_ID) + 1
        assert [r["patient_name"] for r in _patients(index, PatientName="New^Person")] == [
            "New^Person"
        ]
        collide = _patients(index, PatientID="COLLIDE", IssuerOfPatientID="")
        assert sorted(r["issuer_of_patient_id"] for r in collide) == ["SITE_A", "SITE_B"]
    finally:
        index.close()
    index = open_migrated()  # opened again: nothing left to migrate
    try:
        assert index.stats()["patients"] == len(EMPTY_ID) + 1 + 1 + 2 + 1
    finally:
        index.close()


def _downgrade_to_schema_3(path: Path) -> None:
    """Make the node's index what version 3 would have made of the same objects: one
    patient row per Patient ID, with the first-received study's values."""
    old = path.with_name("schema4.sqlite")
    source = sqlite3.connect(path)
    source.execute("VACUUM INTO ?", (str(old),))  # the WAL's content too
    source.close()
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2, 3):
        for statement in migrations(SQLITE)[version]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    conn.execute("ATTACH DATABASE ? AS src", (str(old),))
    patient = "patient_id, issuer_of_patient_id, patient_name, patient_birth_date, patient_sex"
    conn.execute(
        f"INSERT INTO patients ({patient}) SELECT {patient} FROM src.studies "
        "WHERE pk IN (SELECT MIN(pk) FROM src.studies GROUP BY patient_id) ORDER BY pk"
    )
    study = [row[1] for row in conn.execute("PRAGMA main.table_info(studies)")][2:]
    conn.execute(
        f"INSERT INTO studies (pk, patient_fk, {', '.join(study)}) SELECT s.pk, "
        "(SELECT p.pk FROM patients p WHERE p.patient_id = s.patient_id), "
        f"{', '.join(f's.{c}' for c in study)} FROM src.studies s"
    )
    for table in ("series", "instances", "jobs", "forwards"):  # schema 3's columns only
        columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA main.table_info({table})"))
        conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM src.{table}")
    conn.execute("DETACH DATABASE src")
    conn.close()
    old.unlink()


def test_reindex_restores_what_a_migrated_index_cannot_know(tmp_path):
    """An index of schema 3 filed every study without Patient ID under one patient with
    the first one's name; the migration parts the patients, `compacs reindex` reads the
    names back from the stored objects."""
    config = write_config(tmp_path / "plain.toml", NO_COMPRESSION)
    out = tmp_path / "rsp"
    node = NodeProcess(tmp_path / "data", config=config).start()
    sent, by_uid = datasets()
    try:
        assert send_datasets(node.port, sent) == [Status.SUCCESS] * len(sent)
    finally:
        assert node.stop() == 0
    _downgrade_to_schema_3(node.data_dir / "index.sqlite")
    # a store of schema 3's time carried no owner marker (storage/owner, schema 5)
    (node.data_dir / "store" / OWNER_KEY).unlink()

    node.start()  # migrates to schema 4
    try:
        every = findscu(node, out, "-P", *PATIENT_KEYS)
        anonymous = [ds for ds in every if not str(ds.get("PatientID", "") or "")]
        assert len(anonymous) == len(EMPTY_ID)
        assert names(anonymous) == Counter({"Citizen^Jan": len(EMPTY_ID)})  # the merged name
        assert len(studies_named(node, out, "Citizen^Jan")) == len(EMPTY_ID)
    finally:
        assert node.stop() == 0

    result = node.cli("reindex", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    node.start()
    try:
        check_study_level(node, out, by_uid)
        check_patient_level(node, out)
    finally:
        node.stop()
