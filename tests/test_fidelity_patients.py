"""Patient identity in the index (issue 13, item C): C-FIND answers each study with its own
patient attributes, and an empty Patient ID identifies nobody.

The queries go through DCMTK's findscu against a real node (SQLite and PostgreSQL
indexes); findscu's responses (``-X``) are compared with the values the test sent.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.conftest import NO_COMPRESSION, NodeProcess, dcmtk_env, require_dcmtk, write_config
from tests.scu import send_datasets

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
    args = ["findscu", "-X", "-od", str(out), model, "-aec", node.aet]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-1500:]
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
