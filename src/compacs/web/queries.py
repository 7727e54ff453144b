"""URL query parameters -> a C-FIND identifier -> index rows, with C-FIND's own matching.

``GET /api/studies?PatientName=DOE*&StudyDate=20200101-20201231`` becomes the identifier a
C-FIND SCU would send (raw elements, UTF-8), parsed by :func:`compacs.query.parse_identifier`
and answered by ``index.find``: wildcards, ranges, UID lists and case rules are the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from itertools import islice
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from compacs.dicom.attributes import IMAGE, INDEXED, LEVELS, PATIENT, SERIES, STUDY
from compacs.index import Catalogue
from compacs.query import INDEXED_KEYS, PATIENT_ROOT, QueryError, parse_identifier, tag_and_vr

PAGING = ("limit", "offset")
DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET = 100, 1000, 10**9

# Longest value of one key per VR, in characters (PS3.5 6.2, Table 6.2-1): PN is up to three
# component groups of 64 with their '=' delimiters; a DA/TM/DT range is two values and '-'
# (PS3.4 C.2.2.2.5). A UID list (PS3.4 C.2.2.2.2) is bounded by MAX_VALUES.
MAX_CHARS = {"AE": 16, "CS": 16, "DA": 8, "DT": 26, "IS": 12, "LO": 64, "PN": 3 * 64 + 2}
MAX_CHARS |= {"SH": 16, "TM": 14, "UI": 64, "US": 5}
RANGE_VRS = ("DA", "DT", "TM")
MAX_VALUES = 256
_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.[0-9]{1,6})?)?)?")

# Derived keys answered per level (PS3.4 C.6.1.1); ModalitiesInStudy may also be matched.
DERIVED = {
    PATIENT: ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"),
    STUDY: ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"),
    SERIES: ("NumberOfSeriesRelatedInstances",),
    IMAGE: (),
}
KEYWORD_OF_COLUMN = {attr.column: attr.keyword for attrs in INDEXED.values() for attr in attrs}


class BadQuery(ValueError):
    """A search the API refuses (HTTP 400); the message says which parameter and why."""


def search_keys(level: str) -> list[str]:
    """The keywords a search at ``level`` may match on (its level and those above)."""
    depth = LEVELS.index(level)
    keys = [a.keyword for lv in LEVELS[: depth + 1] for a in INDEXED[lv]]
    return keys + (["ModalitiesInStudy"] if level == STUDY else [])


def check_length(keyword: str, vr: str, value: str) -> None:
    """:class:`BadQuery` when ``value`` (backslash-separated values) is longer than its VR
    allows, or has more than :data:`MAX_VALUES` values."""
    values = value.split("\\")
    if len(values) > MAX_VALUES:
        raise BadQuery(f"{keyword}: {len(values)} values, at most {MAX_VALUES}")
    limit = MAX_CHARS.get(vr, 64)
    if vr in RANGE_VRS:
        limit = 2 * limit + 1
    for one in values:
        if len(one) > limit:
            raise BadQuery(
                f"{keyword}: a value of {len(one)} characters; {vr} allows at most {limit} "
                "(PS3.5 6.2)"
            )


def _is_date(text: str) -> bool:
    """A DA value, YYYYMMDD, that names a day of the calendar (PS3.5 6.2)."""
    try:
        return _DA.fullmatch(text) is not None and bool(date.fromisoformat(text))
    except ValueError:
        return False


def _is_time(text: str) -> bool:
    """A TM value, HH[MM[SS[.F{1,6}]]] (PS3.5 6.2; the colons of ACR-NEMA tolerated, as
    :mod:`compacs.query` does), each part within its range (SS 60: a leap second)."""
    found = _TM.fullmatch(text.replace(":", ""))
    if found is None:
        return False
    hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return hours < 24 and minutes < 60 and seconds <= 60


def check_format(keyword: str, vr: str, value: str) -> None:
    """:class:`BadQuery` naming ``keyword`` when a DA or TM value is neither a date or
    time of PS3.5 6.2 nor a range of them (PS3.4 C.2.2.2.5): ``2020-13-45`` is refused,
    not matched as text. Universal (``*``, empty) and empty-value (``""``) matching pass."""
    valid = {"DA": _is_date, "TM": _is_time}.get(vr)
    if valid is None or value in ("", "*", '""'):
        return
    what = "a date YYYYMMDD" if vr == "DA" else "a time HHMMSS.FFFFFF"
    for one in value.split("\\"):
        bounds = one.split("-")
        if len(bounds) > 2 or not any(bounds) or not all(valid(b) for b in bounds if b):
            raise BadQuery(
                f"{keyword}={value!r}: expected {what} or a range of them "
                "(PS3.5 6.2, PS3.4 C.2.2.2.5)"
            )


def _raw(ds: Dataset, keyword: str, value: str) -> None:
    tag, vr = tag_and_vr(keyword)
    check_length(keyword, vr, value)
    check_format(keyword, vr, value)
    if vr == "US":
        try:
            number = int(value)
            data = number.to_bytes(2, "little")
        except (ValueError, OverflowError):
            raise BadQuery(f"{keyword}={value!r}: expected an integer 0-65535") from None
    else:
        data = value.encode("utf-8")
        data += b"\0" if vr == "UI" and len(data) % 2 else b" " if len(data) % 2 else b""
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, False, True)


def _joined(given: list[str]) -> str:
    """The values of one key as one DICOM multi-value; only empty values (``a=&a=``, or
    ``a=\\\\``) are one empty value: universal matching (PS3.4 C.2.2.2.3), not a list
    of nothing."""
    joined = "\\".join(given)
    return "" if not joined.replace("\\", "") else joined


def identifier(level: str, params: list[tuple[str, str]], returns: Iterable[str] = ()) -> Dataset:
    """The C-FIND identifier for a search at ``level`` (paging parameters left out); the
    derived keys of the level, and those of ``returns`` (of the level or above, e.g. a
    study's counts on a series search), are asked as return keys."""
    allowed = search_keys(level)
    values: dict[str, list[str]] = {}
    for key, value in params:
        if key in PAGING:
            continue
        if key not in allowed:
            below = " (an attribute of a lower level)" if key in INDEXED_KEYS else ""
            raise BadQuery(
                f"unknown search key {key!r}{below} for {level.lower()} searches; "
                f"known: {', '.join(allowed)}"
            )
        values.setdefault(key, []).append(value)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for key, given in values.items():
        _raw(ds, key, _joined(given))
    for key in dict.fromkeys([*DERIVED[level], *returns]):
        if key not in values:
            _raw(ds, key, "")
    return ds


def paging(params: list[tuple[str, str]], default_limit: int = DEFAULT_LIMIT) -> tuple[int, int]:
    """``(limit, offset)`` from the parameters; :class:`BadQuery` outside their bounds."""
    given = dict(params)
    try:
        limit = int(given.get("limit", default_limit))
        offset = int(given.get("offset", 0))
    except ValueError:
        raise BadQuery("limit and offset must be integers") from None
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise BadQuery(f"limit must be 1-{MAX_LIMIT} and offset 0-{MAX_OFFSET}")
    return limit, offset


def item(row: dict[str, Any]) -> dict[str, Any]:
    """An index row keyed by DICOM keywords (derived keys keep their names)."""
    return {KEYWORD_OF_COLUMN.get(k, k): v for k, v in row.items()}


def search(
    index: Catalogue,
    level: str,
    params: list[tuple[str, str]],
    pn_case_insensitive: bool = True,
    returns: Iterable[str] = (),
) -> dict[str, Any]:
    """One page of matches: ``{"items", "offset", "limit", "more"}``; ``returns``: more
    derived keys to answer (:func:`identifier`)."""
    limit, offset = paging(params)
    try:
        query = parse_identifier(
            identifier(level, params, returns),
            PATIENT_ROOT,
            pn_case_insensitive=pn_case_insensitive,
        )
    except QueryError as exc:
        raise BadQuery(exc.comment) from None
    rows = index.find(query)
    try:
        page = [item(r) for r in islice(rows, offset, offset + limit + 1)]
    finally:
        rows.close()
    return {
        "items": page[:limit],
        "offset": offset,
        "limit": limit,
        "more": len(page) > limit,
    }


def one(index: Catalogue, level: str, keyword: str, value: str) -> dict[str, Any] | None:
    """The entity whose unique key ``keyword`` is exactly ``value`` (no wildcards)."""
    if any(ch in value for ch in "*?\\"):
        return None
    asked = value or '""'  # an empty Patient ID (Type 2): empty-value matching
    found = search(index, level, [(keyword, asked), ("limit", "2")])["items"]
    exact = [f for f in found if f.get(keyword) == value]
    return exact[0] if exact else None
