"""C-FIND matching (PS3.4 C.2.2.2) against a known index: parse_identifier -> SQL -> rows.

One SQLite index is built per module from small synthetic CT data sets whose patient,
study and series attributes are rewritten to exercise each matching rule: single value,
wild card, universal, empty value, list of UID, range and combined date-time matching,
the derived return keys of C.6.1.1, the levels of the Patient Root and Study Root models,
and the response identifiers. Expectations follow the standard, not the implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from compacs.dicom.status import Status
from compacs.index import Duplicates, open_index
from compacs.index.sqlite import SqliteIndex
from compacs.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    Query,
    QueryError,
    parse_identifier,
    response_identifier,
)
from compacs.synthetic import ct_series
from tests.support.records import new_instance

ROOT = "1.2.826.0.1.3680043.10.1010.77."
ALL_STUDIES = frozenset(f"S{n}" for n in range(1, 10))

# -- the known data set ------------------------------------------------------------------

PATIENTS = {  # label: (PatientID, PatientName, PatientBirthDate, PatientSex)
    "P1": ("PID001", "Doe^John", "19600101", "M"),
    "P2": ("PID002", "DOE^JANE", "19650202", "F"),
    "P3": ("PID003", "Smith^Anna", "19700303", "F"),
    "P4": ("PID004", "O'Brien^Pat", "19750404", "M"),
    "P5": ("PID005", "Under_score^X", "19800505", "O"),
    "P6": ("PID006", "UnderXscore^Z", "19850606", "O"),  # decoy for a literal "_"
    "P7": ("PID007", "Percent%Name^Y", "19900707", "F"),
    "P8": ("PID008", "PercentageName^W", "19950808", "M"),  # decoy for a literal "%"
}


@dataclass(frozen=True)
class StudySpec:
    patient: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    series: tuple[tuple[str | None, int], ...]
    """(Modality or None for a series without one, number of instances) per series."""


STUDIES = {
    "S1": StudySpec(
        "P1", "20190315", "083000", "ACC_001", "CT CHEST", "Ref^One", (("CT", 2), ("MR", 1))
    ),
    "S2": StudySpec("P1", "20200101", "230000", "ACCX001", "ct chest", "Ref^One", (("CT", 1),)),
    "S3": StudySpec("P2", "20200102", "010000", "ACC%002", "", "Ref^Two", (("US", 1),)),
    "S4": StudySpec(
        "P3", "20200102", "130000", "ACC2002", "MR BRAIN", "Ref^Two", (("MR", 1), (None, 1))
    ),
    "S5": StudySpec("P4", "20200101", "070000", "ACC005", "HEAD\\NECK", "Ref^Two", (("CT", 1),)),
    "S6": StudySpec("P5", "20201231", "120000", "ACC006", "US ABDOMEN", "Ref^Two", (("US", 1),)),
    # StudyTime in the HHMM form (PS3.5 6.2: TM "0930" is 09:30)
    "S7": StudySpec("P6", "20210601", "0930", "ACC007", "MR SPINE", "Ref^Two", (("MR", 1),)),
    "S8": StudySpec("P7", "20210102", "120000", "ACC008", "CT ABDOMEN", "Ref^Two", (("CT", 1),)),
    "S9": StudySpec("P8", "20211231", "235959", "ACC009", "MR KNEE", "", (("MR", 1),)),
}
# The series of S1 taken on the next day (SeriesDate/SeriesTime differ from the study's)
S1_MR_SERIES_DATE, S1_MR_SERIES_TIME = "20190316", "090000"


def study_uid(study: str) -> str:
    return ROOT + study[1:]


def series_uid(study: str, n: int) -> str:
    return f"{study_uid(study)}.{n}"


def sop_uid(study: str, series: int, k: int) -> str:
    return f"{series_uid(study, series)}.{k}"


def instances_of(study: str, series: int | None = None) -> set[str]:
    spec = STUDIES[study]
    return {
        sop_uid(study, n, k)
        for n, (_, count) in enumerate(spec.series, start=1)
        if series is None or n == series
        for k in range(1, count + 1)
    }


ALL_SERIES = frozenset(
    f"{s}.{n}" for s, spec in STUDIES.items() for n in range(1, len(spec.series) + 1)
)
STUDY_LABEL = {study_uid(s): s for s in STUDIES}
SERIES_LABEL = {series_uid(s, n): f"{s}.{n}" for s in STUDIES for n in (1, 2)}
PATIENT_LABEL = {pid: label for label, (pid, *_) in PATIENTS.items()}
SOP_LABEL = {
    sop_uid(s, n, k): f"{s}.{n}.{k}"
    for s, spec in STUDIES.items()
    for n, (_, count) in enumerate(spec.series, start=1)
    for k in range(1, count + 1)
}


def _datasets() -> Iterator[Dataset]:
    seed = 0
    for study, spec in STUDIES.items():
        pid, name, birth, sex = PATIENTS[spec.patient]
        for n, (modality, count) in enumerate(spec.series, start=1):
            seed += 1
            for k, ds in enumerate(
                ct_series(count, 8, 8, seed=seed, patient_id=pid, patient_name=name), start=1
            ):
                ds.PatientBirthDate, ds.PatientSex = birth, sex
                ds.StudyInstanceUID = study_uid(study)
                ds.SeriesInstanceUID = series_uid(study, n)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid(study, n, k)
                ds.StudyDate, ds.StudyTime = spec.date, spec.time
                ds.SeriesDate, ds.SeriesTime = spec.date, spec.time
                if study == "S1" and n == 2:
                    ds.SeriesDate, ds.SeriesTime = S1_MR_SERIES_DATE, S1_MR_SERIES_TIME
                ds.AccessionNumber = spec.accession
                ds.StudyDescription = spec.description
                ds.ReferringPhysicianName = spec.referring
                ds.StudyID = study
                ds.SeriesNumber = n
                ds.InstanceNumber = k
                if modality is None:
                    del ds.Modality
                else:
                    ds.Modality = modality
                yield ds


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(request, tmp_path_factory) -> Iterator[SqliteIndex]:
    """The same data set in each index backend: every test runs against both, so the
    matching semantics are the same (PS3.4 C.2.2.2)."""
    if request.param == "sqlite":
        idx = SqliteIndex(tmp_path_factory.mktemp("query") / "index.sqlite")
    else:
        idx = open_index(request.getfixturevalue("postgres").database())
    try:
        for ds in _datasets():
            assert idx.add_instance(new_instance(ds), Duplicates.KEEP_FIRST).added
        yield idx
    finally:
        idx.close()


# -- helpers -----------------------------------------------------------------------------


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def query(level: str, model: str = STUDY_ROOT, *, pn_ci: bool = True, **keys: Any) -> Query:
    return parse_identifier(identifier(level, **keys), model, pn_case_insensitive=pn_ci)


def find(index: SqliteIndex, level: str, model: str = STUDY_ROOT, **keys: Any) -> list[dict]:
    pn_ci = keys.pop("pn_ci", True)
    return list(index.find(query(level, model, pn_ci=pn_ci, **keys)))


def labels(rows: list[dict], column: str, names: dict[str, str]) -> set[str]:
    found = [names[row[column]] for row in rows]
    assert len(found) == len(set(found)), f"duplicate matches: {found}"
    return set(found)


def studies(index: SqliteIndex, model: str = STUDY_ROOT, **keys: Any) -> set[str]:
    return labels(find(index, "STUDY", model, **keys), "study_uid", STUDY_LABEL)


def patients(index: SqliteIndex, **keys: Any) -> set[str]:
    return labels(find(index, "PATIENT", PATIENT_ROOT, **keys), "patient_id", PATIENT_LABEL)


def series(index: SqliteIndex, **keys: Any) -> set[str]:
    return labels(find(index, "SERIES", STUDY_ROOT, **keys), "series_uid", SERIES_LABEL)


def images(index: SqliteIndex, **keys: Any) -> set[str]:
    return labels(find(index, "IMAGE", STUDY_ROOT, **keys), "sop_instance_uid", SOP_LABEL)


def answers(index: SqliteIndex, ident: Dataset, model: str = STUDY_ROOT) -> dict[str, Dataset]:
    """Response identifiers per matched entity label (study, series or patient)."""
    q = parse_identifier(ident, model)
    out = {}
    for row in index.find(q):
        if q.level == "PATIENT":
            label = PATIENT_LABEL[row["patient_id"]]
        elif q.level == "SERIES":
            label = SERIES_LABEL[row["series_uid"]]
        elif q.level == "IMAGE":
            label = SOP_LABEL[row["sop_instance_uid"]]
        else:
            label = STUDY_LABEL[row["study_uid"]]
        out[label] = response_identifier(q, row, ident, "COMPACS")
    return out


def values(elem_value: Any) -> set[str]:
    """A response value as a set of strings (multi-valued or not, order ignored)."""
    if elem_value is None or elem_value == "":
        return set()
    if isinstance(elem_value, str):
        return {elem_value}
    return {str(v) for v in elem_value}


def test_the_data_set_is_as_designed(index):
    stats = index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (
        8,
        9,
        11,
        12,
    )
    assert studies(index) == ALL_STUDIES


# -- 1. single value matching (C.2.2.2.1) ---------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        # SH: exact and case-sensitive
        ("AccessionNumber", "ACC_001", {"S1"}),
        ("AccessionNumber", "acc_001", set()),
        ("AccessionNumber", "ACC", set()),  # whole value, not a prefix
        ("AccessionNumber", "ACCX001", {"S2"}),
        ("AccessionNumber", "ACC_001 ", {"S1"}),  # trailing padding is not significant
        # LO: exact and case-sensitive
        ("StudyDescription", "CT CHEST", {"S1"}),
        ("StudyDescription", "ct chest", {"S2"}),
        ("StudyDescription", "Ct Chest", set()),
        ("StudyDescription", "CT", set()),
        ("PatientID", "PID001", {"S1", "S2"}),
        ("PatientID", "pid001", set()),
        # SH StudyID, DA and TM single values
        ("StudyID", "S4", {"S4"}),
        ("StudyDate", "20200102", {"S3", "S4"}),
        ("StudyTime", "120000", {"S6", "S8"}),
        # UI single value
        ("StudyInstanceUID", ROOT + "7", {"S7"}),
        ("StudyInstanceUID", ROOT + "70", set()),
    ],
)
def test_single_value_matching_is_exact_and_case_sensitive(index, keyword, value, expected):
    assert studies(index, **{keyword: value}) == expected


def test_single_value_matching_of_a_cs_attribute_is_case_sensitive(index):
    assert series(index, Modality="CT") == {"S1.1", "S2.1", "S5.1", "S8.1"}
    assert series(index, Modality="ct") == set()
    assert series(index, Modality="C") == set()
    assert patients(index, PatientSex="F") == {"P2", "P3", "P7"}
    assert patients(index, PatientSex="f") == set()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Doe^John", {"P1"}),
        ("doe^john", {"P1"}),
        ("DOE^JOHN", {"P1"}),
        ("DOE^JANE", {"P2"}),
        ("doe^jane", {"P2"}),
        ("o'brien^pat", {"P4"}),
        ("Doe", set()),  # single value matching is on the whole value
        ("Doe^Jo", set()),
    ],
)
def test_person_name_single_value_is_case_insensitive_by_default(index, value, expected):
    assert patients(index, PatientName=value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Doe^John", {"P1"}),
        ("doe^john", set()),
        ("DOE^JOHN", set()),
        ("DOE^JANE", {"P2"}),
        ("Doe^Jane", set()),
    ],
)
def test_person_name_single_value_is_case_sensitive_when_configured(index, value, expected):
    assert patients(index, PatientName=value, pn_ci=False) == expected


def test_person_name_case_rule_applies_to_every_pn_key(index):
    assert studies(index, ReferringPhysicianName="REF^ONE") == {"S1", "S2"}
    assert studies(index, ReferringPhysicianName="REF^ONE", pn_ci=False) == set()
    assert studies(index, ReferringPhysicianName="Ref^One", pn_ci=False) == {"S1", "S2"}


def test_person_name_matching_is_case_insensitive_in_the_study_level_of_both_models(index):
    for model in (STUDY_ROOT, PATIENT_ROOT):
        assert studies(index, model, PatientName="doe^john") == {"S1", "S2"}
        assert studies(index, model, PatientName="doe^john", pn_ci=False) == set()


def test_single_value_conditions_combine_with_and(index):
    assert studies(index, PatientName="Doe^John", StudyDate="20200101") == {"S2"}
    assert studies(index, PatientName="Doe^John", AccessionNumber="ACC%002") == set()


# -- 2. wild card matching (C.2.2.2.4) ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Doe*", {"P1", "P2"}),  # PN: case-insensitive by default
        ("doe*", {"P1", "P2"}),
        ("D?E^J*", {"P1", "P2"}),
        ("*^Anna", {"P3"}),
        ("?mith^Anna", {"P3"}),
        ("Smith^Ann?", {"P3"}),
        ("Smith^An?", set()),  # "?" is exactly one character
        ("Smith^Anna?", set()),
        ("Smith^Anna*", {"P3"}),  # "*" also matches no character
        ("O'Brien*", {"P4"}),  # a quote is an ordinary character
        ("*n*", {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"}),
        ("X*", set()),
    ],
)
def test_wild_cards_in_person_names(index, value, expected):
    assert patients(index, PatientName=value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Doe*", {"P1"}),
        ("DOE*", {"P2"}),
        ("doe*", set()),
        ("D?e^*", {"P1"}),
    ],
)
def test_wild_cards_in_person_names_case_sensitive_when_configured(index, value, expected):
    assert patients(index, PatientName=value, pn_ci=False) == expected


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("AccessionNumber", "ACC?00?", {"S1", "S2", "S3", "S4"}),
        ("AccessionNumber", "ACC00?", {"S5", "S6", "S7", "S8", "S9"}),
        ("AccessionNumber", "acc*", set()),  # SH wild card matching is case-sensitive
        ("AccessionNumber", "*001", {"S1", "S2"}),
        ("StudyDescription", "CT*", {"S1", "S8"}),
        ("StudyDescription", "ct*", {"S2"}),
        ("StudyDescription", "*CHEST", {"S1"}),
        ("StudyDescription", "MR ?????", {"S4", "S7"}),
        ("StudyDescription", "*A*", {"S4", "S5", "S6", "S8"}),
        ("PatientID", "PID00?", {f"S{n}" for n in range(1, 10)}),
        ("PatientID", "pid*", set()),
    ],
)
def test_wild_cards_in_sh_and_lo_are_case_sensitive(index, keyword, value, expected):
    assert studies(index, **{keyword: value}) == expected


def test_wild_cards_in_code_strings(index):
    assert series(index, Modality="C?") == {"S1.1", "S2.1", "S5.1", "S8.1"}
    assert series(index, Modality="?R") == {"S1.2", "S4.1", "S7.1", "S9.1"}
    assert series(index, Modality="U*") == {"S3.1", "S6.1"}
    assert series(index, Modality="c*") == set()
    assert patients(index, PatientSex="?") == set(PATIENTS)


def test_a_star_matches_a_zero_length_value(index):
    # "*" shall match any sequence of characters, including a zero length value
    assert studies(index, StudyDescription="**") == ALL_STUDIES
    assert series(index, Modality="**") == ALL_SERIES


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", ROOT + "*"),
        ("StudyInstanceUID", ROOT + "?"),
        ("StudyInstanceUID", "*" + "1"),
        ("StudyDate", "2020*"),
        ("StudyDate", "2020010?"),
        ("StudyTime", "12*"),
        ("StudyTime", "12000?"),
    ],
)
def test_wild_cards_are_literal_for_ui_da_and_tm(index, keyword, value):
    assert studies(index, **{keyword: value}) == set()


def test_wild_cards_are_literal_in_series_and_instance_uids(index):
    assert series(index, StudyInstanceUID=study_uid("S1"), SeriesInstanceUID=ROOT + "1.*") == set()
    assert (
        images(
            index,
            StudyInstanceUID=study_uid("S1"),
            SeriesInstanceUID=series_uid("S1", 1),
            SOPInstanceUID=series_uid("S1", 1) + ".?",
        )
        == set()
    )


@pytest.mark.parametrize(
    "keyword",
    [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDescription",
        "ReferringPhysicianName",
        "ModalitiesInStudy",
    ],
)
def test_a_lone_star_is_universal_matching_for_any_vr(index, keyword):
    q = query("STUDY", **{keyword: "*"})
    assert q.conditions == ()
    assert keyword in q.return_keys
    assert studies(index, **{keyword: "*"}) == ALL_STUDIES


def test_a_lone_star_at_the_series_and_image_levels(index):
    assert len(series(index, StudyInstanceUID=study_uid("S4"), Modality="*")) == 2
    assert images(index, StudyInstanceUID=study_uid("S1"), SOPInstanceUID="*") == {
        "S1.1.1",
        "S1.1.2",
        "S1.2.1",
    }


# -- 3. SQL metacharacters are data ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Under_score^X", {"P5"}),
        ("Under_score*", {"P5"}),  # "_" is not a one-character wild card
        ("Under?score*", {"P5", "P6"}),
        ("*_*", {"P5"}),
        ("Percent%Name^Y", {"P7"}),
        ("Percent%*", {"P7"}),  # "%" is not a many-character wild card
        ("Percent*Name^*", {"P7", "P8"}),
        ("*%*", {"P7"}),
        ("%", set()),
        ("%*", set()),
        ("_*", set()),
        ("____^_", set()),
    ],
)
def test_sql_metacharacters_in_names_match_literally(index, value, expected):
    assert patients(index, PatientName=value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ACC_001", {"S1"}),
        ("ACC_*", {"S1"}),
        ("ACC_00?", {"S1"}),
        ("ACC%002", {"S3"}),
        ("ACC%*", {"S3"}),
        ("ACC%", set()),
        ("ACC_", set()),
        ("%", set()),
        ("*%*", {"S3"}),
        ("*_*", {"S1"}),
    ],
)
def test_sql_metacharacters_in_accession_numbers_match_literally(index, value, expected):
    assert studies(index, AccessionNumber=value) == expected


def test_backslash_is_not_an_escape_character(index):
    # S5's StudyDescription holds "HEAD\NECK"; the backslash must not escape the wild card
    assert studies(index, StudyDescription="HEAD\\NECK") == {"S5"}
    assert studies(index, StudyDescription="HEAD\\N*") == {"S5"}
    assert studies(index, StudyDescription="*\\*") == {"S5"}
    assert studies(index, StudyDescription="HEAD\\%*") == set()
    assert studies(index, StudyDescription="HEAD\\_ECK") == set()


# -- 4. universal matching (C.2.2.2.3) ---------------------------------------------------


def test_zero_length_keys_match_everything_and_are_returned(index):
    keys = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber")
    ident = identifier("STUDY", StudyDescription="", **dict.fromkeys(keys, ""))
    q = parse_identifier(ident, STUDY_ROOT)
    assert q.conditions == ()
    got = answers(index, ident)
    assert set(got) == ALL_STUDIES
    for label, ds in got.items():
        spec = STUDIES[label]
        for keyword in (*keys, "StudyDescription"):
            assert keyword in ds, (label, keyword)
        assert str(ds.PatientName) == PATIENTS[spec.patient][1]
        assert ds.PatientID == PATIENTS[spec.patient][0]
        assert ds.StudyDate == spec.date
        assert ds.StudyTime == spec.time
        assert ds.AccessionNumber == spec.accession
    assert got["S1"].StudyDescription == "CT CHEST"
    assert got["S3"]["StudyDescription"].value in (None, "")  # present, zero length
    assert values(got["S5"].StudyDescription) == {"HEAD", "NECK"}


def test_universal_matching_includes_entities_without_the_attribute(index):
    got = answers(index, identifier("SERIES", StudyInstanceUID=study_uid("S4"), Modality=""))
    assert set(got) == {"S4.1", "S4.2"}
    assert got["S4.1"].Modality == "MR"
    assert "Modality" in got["S4.2"] and got["S4.2"]["Modality"].value in (None, "")
    assert series(index, Modality="") == ALL_SERIES


# -- 5. list of UID matching (C.2.2.2.2) ---------------------------------------------------


def test_list_of_study_uids(index):
    uids = [study_uid("S1"), study_uid("S3"), study_uid("S9")]
    assert studies(index, StudyInstanceUID=uids) == {"S1", "S3", "S9"}
    assert studies(index, StudyInstanceUID="\\".join(uids)) == {"S1", "S3", "S9"}
    assert studies(index, StudyInstanceUID=[*uids, "1.2.3.4"]) == {"S1", "S3", "S9"}
    assert studies(index, StudyInstanceUID=["1.2.3.4", "1.2.3.5"]) == set()
    q = query("STUDY", StudyInstanceUID=uids)
    assert len(q.conditions) == 1 and set(q.conditions[0].values) == set(uids)


def test_list_of_uids_combines_with_other_keys(index):
    uids = [study_uid("S1"), study_uid("S2"), study_uid("S3")]
    assert studies(index, StudyInstanceUID=uids, PatientName="doe^john") == {"S1", "S2"}
    assert studies(index, StudyInstanceUID=uids, ModalitiesInStudy="US") == {"S3"}


def test_list_of_series_and_instance_uids(index):
    assert series(
        index,
        StudyInstanceUID=study_uid("S4"),
        SeriesInstanceUID=[series_uid("S4", 1), series_uid("S4", 2)],
    ) == {"S4.1", "S4.2"}
    assert images(
        index,
        StudyInstanceUID=study_uid("S1"),
        SeriesInstanceUID=series_uid("S1", 1),
        SOPInstanceUID=[sop_uid("S1", 1, 2), sop_uid("S1", 2, 1), "1.2.3"],
    ) == {"S1.1.2"}


# -- 6. range matching (C.2.2.2.5) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200101-20201231", {"S2", "S3", "S4", "S5", "S6"}),
        ("20200102-20200102", {"S3", "S4"}),  # bounds are inclusive
        ("20190315-20200101", {"S1", "S2", "S5"}),
        ("-20191231", {"S1"}),
        ("-20190315", {"S1"}),
        ("20210101-", {"S7", "S8", "S9"}),
        ("20211231-", {"S9"}),
        ("20220101-", set()),
        ("-20190314", set()),
        ("20200103-20201230", set()),
    ],
)
def test_date_ranges(index, value, expected):
    assert studies(index, StudyDate=value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0800-1200", {"S1", "S6", "S7", "S8"}),
        ("-0759", {"S3", "S5"}),
        ("-070000", {"S3", "S5"}),
        ("1300-", {"S2", "S4", "S9"}),
        ("120000-120000", {"S6", "S8"}),
        ("1201-1259", set()),
        ("235959-", {"S9"}),
    ],
)
def test_time_ranges(index, value, expected):
    assert studies(index, StudyTime=value) == expected


def test_time_range_includes_a_time_stored_as_hhmm_at_the_lower_bound(index):
    # S7's StudyTime is "0930" (09:30:00): it lies within 0930-1000, bounds included
    assert studies(index, StudyTime="0930-1000") == {"S7"}
    assert studies(index, StudyTime="093000-1000") == {"S7"}


def test_date_range_with_other_keys(index):
    assert studies(index, StudyDate="20200101-20201231", ModalitiesInStudy="CT") == {"S2", "S5"}
    assert studies(index, StudyDate="20200101-", PatientName="doe*") == {"S2", "S3"}


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        # from 2020-01-01 08:00 to 2020-01-02 12:00: 01-01 23:00 and 01-02 01:00 are inside,
        # 01-01 07:00 and 01-02 13:00 outside (matched apart, no study would match)
        ("20200101-20200102", "0800-1200", {"S2", "S3"}),
        ("20200102-", "1200-", {"S4", "S6", "S7", "S8", "S9"}),
        ("-20200101", "-0800", {"S1", "S5"}),
        ("20190315-20200101", "0830-0700", {"S1", "S5"}),
        ("20201231-20210601", "1200-0930", {"S6", "S7", "S8"}),
    ],
)
def test_study_date_and_time_ranges_match_as_one_datetime_range(index, date, time, expected):
    assert studies(index, StudyDate=date, StudyTime=time) == expected


def test_series_date_and_time(index):
    assert series(index, SeriesDate=S1_MR_SERIES_DATE) == {"S1.2"}
    assert series(index, StudyInstanceUID=study_uid("S1"), SeriesTime="0900-") == {"S1.2"}
    assert series(index, SeriesDate="20190315-20190316", SeriesTime="0845-0900") == {"S1.2"}


def test_a_malformed_date_range_is_refused(index):
    with pytest.raises(QueryError) as err:
        query("STUDY", StudyDate="2020-2021")
    assert err.value.status == Status.DATASET_MISMATCH


# -- 7. empty value matching -----------------------------------------------------------------


def test_empty_value_matching(index):
    assert studies(index, StudyDescription='""') == {"S3"}
    assert studies(index, ReferringPhysicianName='""') == {"S9"}
    assert studies(index, AccessionNumber='""') == set()
    assert series(index, Modality='""') == {"S4.2"}
    assert series(index, StudyInstanceUID=study_uid("S1"), Modality='""') == set()


def test_empty_value_matching_returns_the_empty_attribute(index):
    got = answers(index, identifier("STUDY", StudyDescription='""', AccessionNumber=""))
    assert set(got) == {"S3"}
    assert "StudyDescription" in got["S3"]
    assert got["S3"]["StudyDescription"].value in (None, "")
    assert got["S3"].AccessionNumber == "ACC%002"


# -- 8. ModalitiesInStudy and the derived return keys (C.6.1.1.3 - C.6.1.1.4) -----------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CT", {"S1", "S2", "S5", "S8"}),
        ("MR", {"S1", "S4", "S7", "S9"}),
        ("US", {"S3", "S6"}),
        (["CT", "US"], {"S1", "S2", "S3", "S5", "S6", "S8"}),
        ("CT\\MR", {"S1", "S2", "S4", "S5", "S7", "S8", "S9"}),
        (["NM", "US"], {"S3", "S6"}),
        ("NM", set()),
        ("ct", set()),  # CS: case-sensitive
        ("M?", {"S1", "S4", "S7", "S9"}),  # CS: wild cards apply
        # a list of empty values is universal matching (it made the SQL "AND ()"; found
        # by the web API's query fuzzing)
        ("\\", {f"S{n}" for n in range(1, 10)}),
    ],
)
def test_modalities_in_study_matching(index, value, expected):
    assert studies(index, ModalitiesInStudy=value) == expected


def test_modalities_in_study_matching_in_patient_root(index):
    assert studies(index, PATIENT_ROOT, PatientID="PID001", ModalitiesInStudy="MR") == {"S1"}


EXPECTED_DERIVED = {  # study: (series, instances, modalities)
    "S1": (2, 3, {"CT", "MR"}),
    "S2": (1, 1, {"CT"}),
    "S3": (1, 1, {"US"}),
    "S4": (2, 2, {"MR"}),  # the series without a modality adds none
    "S5": (1, 1, {"CT"}),
    "S6": (1, 1, {"US"}),
    "S7": (1, 1, {"MR"}),
    "S8": (1, 1, {"CT"}),
    "S9": (1, 1, {"MR"}),
}


@pytest.mark.parametrize("model", [STUDY_ROOT, PATIENT_ROOT])
def test_study_derived_return_keys(index, model):
    ident = identifier(
        "STUDY",
        StudyInstanceUID="",
        NumberOfStudyRelatedSeries=None,
        NumberOfStudyRelatedInstances=None,
        ModalitiesInStudy="",
        SOPClassesInStudy="",
    )
    got = answers(index, ident, model)
    assert set(got) == ALL_STUDIES
    for label, (n_series, n_instances, modalities) in EXPECTED_DERIVED.items():
        ds = got[label]
        assert int(ds.NumberOfStudyRelatedSeries) == n_series, label
        assert int(ds.NumberOfStudyRelatedInstances) == n_instances, label
        assert values(ds.ModalitiesInStudy) == modalities, label
        assert values(ds.SOPClassesInStudy) == {CTImageStorage}, label


def test_modalities_in_study_returns_every_modality_of_a_matched_study(index):
    got = answers(index, identifier("STUDY", ModalitiesInStudy="MR", PatientID="PID001"))
    assert set(got) == {"S1"}
    assert values(got["S1"].ModalitiesInStudy) == {"CT", "MR"}


def test_derived_rows_from_the_index(index):
    rows = find(
        index,
        "STUDY",
        StudyInstanceUID=study_uid("S1"),
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )
    assert len(rows) == 1
    row = rows[0]
    assert int(row["NumberOfStudyRelatedSeries"]) == 2
    assert int(row["NumberOfStudyRelatedInstances"]) == 3
    assert set(row["ModalitiesInStudy"].split("\\")) == {"CT", "MR"}


def test_series_related_instances(index):
    got = answers(
        index,
        identifier(
            "SERIES",
            StudyInstanceUID=study_uid("S1"),
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances=None,
        ),
    )
    assert set(got) == {"S1.1", "S1.2"}
    assert int(got["S1.1"].NumberOfSeriesRelatedInstances) == 2
    assert int(got["S1.2"].NumberOfSeriesRelatedInstances) == 1
    assert got["S1.1"].Modality == "CT" and got["S1.2"].Modality == "MR"


def test_patient_related_counts(index):
    ident = identifier(
        "PATIENT",
        PatientID="",
        PatientName="",
        NumberOfPatientRelatedStudies=None,
        NumberOfPatientRelatedSeries=None,
        NumberOfPatientRelatedInstances=None,
    )
    got = answers(index, ident, PATIENT_ROOT)
    assert set(got) == set(PATIENTS)
    expected = {"P1": (2, 3, 4), "P3": (1, 2, 2)}
    for label, ds in got.items():
        n_studies, n_series, n_instances = expected.get(label, (1, 1, 1))
        assert int(ds.NumberOfPatientRelatedStudies) == n_studies, label
        assert int(ds.NumberOfPatientRelatedSeries) == n_series, label
        assert int(ds.NumberOfPatientRelatedInstances) == n_instances, label
        assert str(ds.PatientName) == PATIENTS[label][1]


def test_patient_related_studies_in_study_root(index):
    got = answers(
        index, identifier("STUDY", PatientID="PID001", NumberOfPatientRelatedStudies=None)
    )
    assert set(got) == {"S1", "S2"}
    assert all(int(ds.NumberOfPatientRelatedStudies) == 2 for ds in got.values())


# -- 9. levels and keys (C.4.1, C.6.1, C.6.2) ----------------------------------------------


def test_patient_level_is_only_in_patient_root(index):
    with pytest.raises(QueryError) as err:
        query("PATIENT", STUDY_ROOT, PatientName="Doe*")
    assert err.value.status == 0xA900
    assert patients(index, PatientName="Doe*") == {"P1", "P2"}


@pytest.mark.parametrize("model", [STUDY_ROOT, PATIENT_ROOT])
@pytest.mark.parametrize("level", ["", "FOO", "INSTANCE", "FRAME"])
def test_unknown_levels_are_refused(model, level):
    with pytest.raises(QueryError) as err:
        query(level, model)
    assert err.value.status == 0xA900


def test_missing_level_is_refused():
    ds = Dataset()
    ds.PatientName = "Doe*"
    for model in (STUDY_ROOT, PATIENT_ROOT):
        with pytest.raises(QueryError) as err:
            parse_identifier(ds, model)
        assert err.value.status == 0xA900


def test_patient_level_answers_one_row_per_patient(index):
    rows = find(index, "PATIENT", PATIENT_ROOT, PatientID="PID001", PatientName="")
    assert len(rows) == 1 and rows[0]["patient_name"] == "Doe^John"
    assert patients(index, PatientBirthDate="19600101-19700303") == {"P1", "P2", "P3"}


def test_study_level_in_patient_root(index):
    assert studies(index, PATIENT_ROOT, PatientID="PID001") == {"S1", "S2"}
    assert studies(index, PATIENT_ROOT, PatientID="PID003", StudyDate="20200102") == {"S4"}


def test_series_level_within_a_study(index):
    assert series(index, StudyInstanceUID=study_uid("S1")) == {"S1.1", "S1.2"}
    assert series(index, StudyInstanceUID=study_uid("S1"), Modality="MR") == {"S1.2"}
    assert series(index, StudyInstanceUID=study_uid("S2"), Modality="MR") == set()
    assert series(index, StudyInstanceUID=study_uid("S4"), SeriesNumber="2") == {"S4.2"}
    rows = find(index, "SERIES", PATIENT_ROOT, PatientID="PID001", StudyInstanceUID="")
    assert labels(rows, "series_uid", SERIES_LABEL) == {"S1.1", "S1.2", "S2.1"}


def test_image_level(index):
    keys = {"StudyInstanceUID": study_uid("S1"), "SeriesInstanceUID": series_uid("S1", 1)}
    assert images(index, **keys) == {"S1.1.1", "S1.1.2"}
    assert images(index, **keys, InstanceNumber="2") == {"S1.1.2"}
    assert images(index, **keys, SOPInstanceUID=sop_uid("S1", 1, 1)) == {"S1.1.1"}
    assert images(index, StudyInstanceUID=study_uid("S4")) == {"S4.1.1", "S4.2.1"}
    rows = find(index, "IMAGE", PATIENT_ROOT, PatientID="PID004", SOPInstanceUID="")
    assert labels(rows, "sop_instance_uid", SOP_LABEL) == {"S5.1.1"}


@pytest.mark.parametrize(
    ("model", "level", "keyword"),
    [
        (STUDY_ROOT, "STUDY", "SOPInstanceUID"),
        (STUDY_ROOT, "STUDY", "SeriesInstanceUID"),
        (STUDY_ROOT, "SERIES", "SOPInstanceUID"),
        (PATIENT_ROOT, "PATIENT", "StudyInstanceUID"),
        (PATIENT_ROOT, "PATIENT", "SOPInstanceUID"),
        (PATIENT_ROOT, "STUDY", "SeriesInstanceUID"),
    ],
)
def test_a_unique_key_below_the_query_level_is_refused(model, level, keyword):
    with pytest.raises(QueryError) as err:
        query(level, model, **{keyword: ROOT + "1.1.1"})
    assert err.value.status == 0xA900


def test_an_unsupported_optional_key_is_not_matched_and_answered_empty(index):
    ident = identifier("STUDY", PatientWeight="70", AccessionNumber="ACC_001")
    q = parse_identifier(ident, STUDY_ROOT)
    assert "PatientWeight" in q.unsupported
    assert all(c.keyword != "PatientWeight" for c in q.conditions)
    got = answers(index, ident)
    assert set(got) == {"S1"}
    assert "PatientWeight" in got["S1"]
    assert got["S1"]["PatientWeight"].value in (None, "")
    assert studies(index, PatientWeight="70") == ALL_STUDIES


# -- 10. response identifiers (C.4.1.1.3.2) ----------------------------------------------


def test_response_identifier_fields(index):
    ident = identifier(
        "STUDY",
        SpecificCharacterSet="ISO_IR 100",
        PatientName="doe^john",
        PatientID="",
        StudyInstanceUID="",
        StudyDate="20190101-20191231",
        StudyDescription="",
        PatientWeight="",
        OtherPatientIDs="",
    )
    got = answers(index, ident)
    assert set(got) == {"S1"}
    ds = got["S1"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.RetrieveAETitle == "COMPACS"
    requested = {e.keyword for e in ident} - {"SpecificCharacterSet"}
    assert requested <= {e.keyword for e in ds}
    assert str(ds.PatientName) == "Doe^John"  # the stored value, not the key
    assert ds.PatientID == "PID001"
    assert ds.StudyInstanceUID == study_uid("S1")
    assert ds.StudyDate == "20190315"
    assert ds.StudyDescription == "CT CHEST"
    assert ds["PatientWeight"].value in (None, "")
    assert ds["OtherPatientIDs"].value in (None, "")
    assert "AccessionNumber" not in ds  # not asked for


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (PATIENT_ROOT, "PATIENT", {"PatientID": "PID003"}),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": ROOT + "4", "Modality": "MR"}),
        (
            STUDY_ROOT,
            "IMAGE",
            {"StudyInstanceUID": ROOT + "4", "SOPInstanceUID": ROOT + "4.2.1"},
        ),
    ],
)
def test_response_identifier_at_each_level(index, model, level, keys):
    ident = identifier(level, **keys)
    got = answers(index, ident, model)
    assert len(got) == 1
    (ds,) = got.values()
    assert ds.QueryRetrieveLevel == level
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.RetrieveAETitle == "COMPACS"
    for keyword, value in keys.items():
        assert getattr(ds, keyword) == value


def test_response_identifier_for_an_entity_missing_an_attribute(index):
    ident = identifier("SERIES", StudyInstanceUID=study_uid("S4"), SeriesNumber="2", Modality="")
    got = answers(index, ident)
    assert set(got) == {"S4.2"}
    assert "Modality" in got["S4.2"] and got["S4.2"]["Modality"].value in (None, "")


# -- 11. the instances a C-MOVE / C-GET sends ---------------------------------------------


def _instance_uids(index: SqliteIndex, level: str, model: str = STUDY_ROOT, **keys) -> set[str]:
    found = index.matching_instances(query(level, model, **keys))
    uids = [row["sop_instance_uid"] for row in found]
    assert len(uids) == len(set(uids))
    for row in found:
        assert row["study_uid"] == row["sop_instance_uid"].rsplit(".", 2)[0]
        assert row["series_uid"] == row["sop_instance_uid"].rsplit(".", 1)[0]
    return set(uids)


def test_matching_instances_of_a_study(index):
    assert _instance_uids(index, "STUDY", StudyInstanceUID=study_uid("S1")) == instances_of("S1")
    assert _instance_uids(
        index, "STUDY", StudyInstanceUID=[study_uid("S4"), study_uid("S9")]
    ) == instances_of("S4") | instances_of("S9")


def test_matching_instances_return_whole_studies(index):
    # every instance of each matched study, including the series of other modalities
    assert _instance_uids(index, "STUDY", ModalitiesInStudy="MR") == (
        instances_of("S1") | instances_of("S4") | instances_of("S7") | instances_of("S9")
    )
    assert _instance_uids(index, "STUDY", PatientName="doe^john") == (
        instances_of("S1") | instances_of("S2")
    )
    assert _instance_uids(index, "STUDY", PATIENT_ROOT, PatientID="PID003") == instances_of("S4")
    assert _instance_uids(index, "PATIENT", PATIENT_ROOT, PatientID="PID001") == (
        instances_of("S1") | instances_of("S2")
    )


def test_matching_instances_of_a_series_and_an_image(index):
    assert _instance_uids(
        index, "SERIES", StudyInstanceUID=study_uid("S1"), SeriesInstanceUID=series_uid("S1", 1)
    ) == instances_of("S1", 1)
    assert _instance_uids(
        index,
        "IMAGE",
        StudyInstanceUID=study_uid("S1"),
        SeriesInstanceUID=series_uid("S1", 1),
        SOPInstanceUID=sop_uid("S1", 1, 2),
    ) == {sop_uid("S1", 1, 2)}


def test_matching_instances_of_nothing(index):
    assert _instance_uids(index, "STUDY", StudyInstanceUID="1.2.3.4") == set()
    assert _instance_uids(index, "STUDY", AccessionNumber="ACC%") == set()


def test_a_stored_value_pydicom_cannot_convert_is_answered_as_stored():
    """A modality once sent Series Number "1A" (IS): C-FIND answers it as stored instead of
    failing every query that asks for Series Number (0xC311)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ident = identifier("SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="", SeriesNumber="")
    q = parse_identifier(ident, STUDY_ROOT)
    row = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "series_number": "1A"}
    answer = response_identifier(q, row, ident, "COMPACS")
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, answer)
    assert b"IS\x02\x001A" in fp.getvalue() and b"1.2.3.4" in fp.getvalue()
