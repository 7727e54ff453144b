"""C-FIND identifiers -> matching conditions on the index (PS3.4 C.2.2.2, C.4.1, C.6).

Pure functions: :func:`parse_identifier` turns an identifier into a :class:`Query`
(raising :class:`QueryError` with the status to answer), the index turns a Query into
SQL, and :func:`response_identifier` turns an index row back into an identifier.
The same Query serves C-MOVE and C-GET to select the instances to send.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from compacs.dicom.attributes import IMAGE, INDEXED, LEVELS, PATIENT, SERIES, STUDY, UNIQUE_KEY
from compacs.dicom.status import Status

PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
MODEL_LEVELS = {PATIENT_ROOT: LEVELS, STUDY_ROOT: (STUDY, SERIES, IMAGE)}

# C.2.2.2.4: wildcards are only meaningful for these VRs
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
# C.2.2.2.5.2: date and time pairs matched together when both are ranges
DATE_TIME_PAIRS = {
    "StudyDate": "StudyTime",
    "SeriesDate": "SeriesTime",
    "ContentDate": "ContentTime",
}

# Attributes the index answers, keyword -> (level, column, VR)
INDEXED_KEYS: dict[str, tuple[str, str, str]] = {
    attr.keyword: (level, attr.column, attr.vr)
    for level, attrs in INDEXED.items()
    for attr in attrs
}
# Derived attributes (C.6.1.1.x): computed by the index, keyword -> level
DERIVED_KEYS: dict[str, str] = {
    "NumberOfPatientRelatedStudies": PATIENT,
    "NumberOfPatientRelatedSeries": PATIENT,
    "NumberOfPatientRelatedInstances": PATIENT,
    "NumberOfStudyRelatedSeries": STUDY,
    "NumberOfStudyRelatedInstances": STUDY,
    "ModalitiesInStudy": STUDY,
    "SOPClassesInStudy": STUDY,
    "NumberOfSeriesRelatedInstances": SERIES,
}
# Always answered, never matched
ANSWERED = ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability")


class QueryError(ValueError):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


class Kind(StrEnum):
    """How a key's value matches (PS3.4 C.2.2.2), as the index's SQL applies it."""

    EQUAL = "equal"
    """Single value matching (C.2.2.2.1)."""
    LIKE = "like"
    """Wild card matching (C.2.2.2.4): ``*`` and ``?`` as SQL LIKE patterns."""
    IN = "in"
    """List of UID matching (C.2.2.2.2)."""
    EMPTY = "empty"
    """Empty value matching: ``""`` matches an empty or absent value (C.2.2.2.1)."""
    RANGE = "range"
    """Range matching of a date or a time (C.2.2.2.5)."""
    DATETIME_RANGE = "datetime_range"
    """A date range and a time range combined into one (C.2.2.2.5.1)."""
    MODALITIES = "modalities"
    """Modalities in Study: any series of the study has one of the values (C.6.2.1.2)."""


@dataclass(frozen=True)
class Condition:
    keyword: str
    level: str
    column: str
    kind: Kind
    values: tuple[Any, ...]
    case_insensitive: bool = False


@dataclass(frozen=True)
class Query:
    model: str
    level: str
    conditions: tuple[Condition, ...]
    return_keys: tuple[str, ...]
    """Keywords to answer, in the order they were asked (indexed and derived)."""
    unsupported: tuple[str, ...]
    """Keys asked that the index does not hold: answered empty, status FF01."""


def _level_of(keyword: str, model: str) -> str | None:
    if keyword in INDEXED_KEYS:
        level = INDEXED_KEYS[keyword][0]
    elif keyword in DERIVED_KEYS:
        level = DERIVED_KEYS[keyword]
    else:
        return None
    if model == STUDY_ROOT and level == PATIENT:
        return STUDY  # Study Root folds the patient into the study level (C.6.2.1)
    return level


def _depth(level: str) -> int:
    return LEVELS.index(level)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def like_pattern(value: str) -> str:
    """DICOM wildcards to a LIKE pattern with the SQL metacharacters escaped (ESCAPE '\\')."""
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _time_bound(value: str, upper: bool) -> str:
    """A TM bound comparable with stored values: HHMMSS(.FFFFFF), the missing part of an
    upper bound filled so that the whole named hour/minute/second is included."""
    value = value.replace(":", "")
    whole, _, fraction = value.partition(".")
    if upper:
        return (
            (whole + "595959"[len(whole) :] if len(whole) < 6 else whole)
            + "."
            + (fraction or "999999")
        )
    return whole.ljust(6, "0") + ("." + fraction if fraction else "")


def _range(keyword: str, vr: str, value: str) -> tuple[str | None, str | None]:
    low, _, high = value.partition("-")
    lo, hi = low.strip() or None, high.strip() or None
    if vr == "TM":
        return (_time_bound(lo, False) if lo else None, _time_bound(hi, True) if hi else None)
    if vr == "DA":
        for bound in (lo, hi):
            if bound is not None and not (bound.isdigit() and len(bound) == 8):
                raise QueryError(
                    Status.DATASET_MISMATCH,
                    f"{keyword} range: expected YYYYMMDD-YYYYMMDD",  # no value: logs stay PHI-free
                )
        return lo, hi
    return lo, hi  # DT: compared as text


def parse_identifier(identifier: Dataset, model: str, *, pn_case_insensitive: bool = True) -> Query:
    """The Query an identifier asks for; QueryError(A900) when it does not fit the model."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in MODEL_LEVELS[model]:
        raise QueryError(
            Status.DATASET_MISMATCH,
            f"Query/Retrieve Level {level!r} is not one of "
            f"{', '.join(MODEL_LEVELS[model])} ({model.title()} Root, PS3.4 C.6)",
        )
    conditions: list[Condition] = []
    return_keys: list[str] = []
    unsupported: list[str] = []
    ranges: dict[str, tuple[str | None, str | None]] = {}

    for elem in identifier:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if keyword in ANSWERED or elem.tag.group in (0x0000, 0x0002):
            continue
        key_level = _level_of(keyword, model)
        if key_level is None:
            unsupported.append(keyword or f"{elem.tag}")
            continue
        if _depth(key_level) > _depth(level):
            if UNIQUE_KEY.get(key_level) == keyword:
                raise QueryError(
                    Status.DATASET_MISMATCH,
                    f"{keyword} is a key of the {key_level} level, below the query level "
                    f"{level} (PS3.4 C.4.1.2.1)",
                )
            unsupported.append(keyword)
            continue
        return_keys.append(keyword)
        if elem.VR == "SQ":
            continue
        value = _text(elem.value).strip() if elem.value is not None else ""
        if value == "" or value == "*":
            continue  # universal matching (C.2.2.2.3)
        if keyword in DERIVED_KEYS:
            if keyword == "ModalitiesInStudy":
                modalities = tuple(v for v in value.split("\\") if v)
                if modalities:  # a list of empty values matches universally (C.2.2.2.3)
                    conditions.append(Condition(keyword, STUDY, "", Kind.MODALITIES, modalities))
            else:
                unsupported.append(keyword)  # counts are answered, not matched on
            continue
        attr_level, column, vr = INDEXED_KEYS[keyword]
        if value == '""':  # empty value matching (C.2.2.2.1)
            conditions.append(Condition(keyword, attr_level, column, Kind.EMPTY, ()))
            continue
        ci = pn_case_insensitive and vr == "PN"
        if vr == "UI":
            uids = tuple(v.strip() for v in value.split("\\") if v.strip())
            kind = Kind.IN if len(uids) > 1 else Kind.EQUAL
            conditions.append(Condition(keyword, attr_level, column, kind, uids))
        elif vr in RANGE_VRS and "-" in value:
            ranges[keyword] = _range(keyword, vr, value)
            conditions.append(Condition(keyword, attr_level, column, Kind.RANGE, ranges[keyword]))
        elif vr in WILDCARD_VRS and ("*" in value or "?" in value):
            conditions.append(
                Condition(keyword, attr_level, column, Kind.LIKE, (like_pattern(value),), ci)
            )
        else:
            conditions.append(Condition(keyword, attr_level, column, Kind.EQUAL, (value,), ci))

    # C.2.2.2.5.2: a date range and a time range of the same entity match as one datetime
    for date_kw, time_kw in DATE_TIME_PAIRS.items():
        if date_kw in ranges and time_kw in ranges:
            date_c = next(c for c in conditions if c.keyword == date_kw)
            time_c = next(c for c in conditions if c.keyword == time_kw)
            (dlo, dhi), (tlo, thi) = ranges[date_kw], ranges[time_kw]
            lo = dlo + (tlo or "") if dlo else None
            hi = dhi + (thi or "235959.999999") if dhi else None
            conditions.remove(date_c)
            conditions.remove(time_c)
            conditions.append(
                Condition(
                    date_kw,
                    date_c.level,
                    f"{date_c.column}|{time_c.column}",
                    Kind.DATETIME_RANGE,
                    (lo, hi),
                )
            )
    return Query(model, level, tuple(conditions), tuple(return_keys), tuple(unsupported))


def _set_stored(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """Set ``tag`` to the indexed ``value``; a value pydicom will not convert (an IS of
    "1A" that a modality once sent) goes out as stored, not as a failed C-FIND (0xC311)."""
    try:
        multiple = isinstance(value, str) and "\\" in value
        ds[tag] = DataElement(tag, vr, value.split("\\") if multiple else value)
    except (ValueError, TypeError, OverflowError):
        raw = str(value).encode("utf-8")
        raw += b" " if len(raw) % 2 else b""
        ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


RESPONSE_CHARACTER_SET = "ISO_IR 192"
"""The index holds decoded text: every answer is in UTF-8 (PS3.5 6.1.2.3, PS3.3 C.12.1.1.2)."""

ResponseElement = tuple[int, str, Any]
"""(tag, VR, value) of a response identifier: value as the index holds it (str, int),
None for a zero-length value, [] for an empty sequence."""


@dataclass(frozen=True)
class ResponsePlan:
    """What every response identifier of one query holds, in tag order: per element its
    tag, VR, the index column that values it (None: ``fixed``) and the fixed value."""

    elements: tuple[tuple[int, str, str | None, Any], ...]


@functools.cache
def tag_and_vr(keyword: str) -> tuple[int, str]:
    """The tag and the VR of a DICOM dictionary keyword (PS3.6); KeyError when unknown."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword}: not a keyword of the DICOM dictionary")
    return int(tag), dictionary_VR(keyword)


def response_plan(query: Query, requested: Dataset, retrieve_aet: str) -> ResponsePlan:
    """Every key asked (PS3.4 C.4.1.2.2: each return key answered, valued from the index
    or empty), unsupported keys answered empty, plus what is always answered."""
    plan: dict[int, tuple[int, str, str | None, Any]] = {}

    def fixed(keyword: str, value: Any) -> None:
        tag, vr = tag_and_vr(keyword)
        plan[tag] = (tag, vr, None, value)

    fixed("SpecificCharacterSet", RESPONSE_CHARACTER_SET)
    fixed("QueryRetrieveLevel", query.level)
    for keyword in query.return_keys:
        tag, vr = tag_and_vr(keyword)
        column = INDEXED_KEYS[keyword][1] if keyword in INDEXED_KEYS else keyword
        plan[tag] = (tag, vr, None, []) if vr == "SQ" else (tag, vr, column, None)
    for keyword in query.unsupported:
        if keyword in requested:
            elem = requested[keyword]
            tag = int(elem.tag)
            if tag not in plan:
                plan[tag] = (tag, elem.VR, None, [] if elem.VR == "SQ" else None)
    fixed("RetrieveAETitle", retrieve_aet)
    fixed("InstanceAvailability", "ONLINE")
    return ResponsePlan(tuple(plan[tag] for tag in sorted(plan)))


def response_elements(plan: ResponsePlan, row: dict[str, Any]) -> list[ResponseElement]:
    """The identifier of one match as (tag, VR, value), in tag order."""
    out = []
    for tag, vr, column, value in plan.elements:
        if column is not None:
            value = row.get(column)
            if value == "":
                value = None
        out.append((tag, vr, value))
    return out


def identifier_dataset(elements: list[ResponseElement]) -> Dataset:
    """``elements`` as a pydicom Dataset (what pydicom's writer encodes)."""
    ds = Dataset()
    for tag, vr, value in elements:
        if value is None or vr == "SQ":
            ds[tag] = DataElement(tag, vr, value)
        else:
            _set_stored(ds, tag, vr, value)
    return ds


def response_identifier(
    query: Query, row: dict[str, Any], requested: Dataset, retrieve_aet: str
) -> Dataset:
    """The identifier of one match: every key asked, valued from the index or empty."""
    plan = response_plan(query, requested, retrieve_aet)
    return identifier_dataset(response_elements(plan, row))
