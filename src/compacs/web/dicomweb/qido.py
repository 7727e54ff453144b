"""QIDO-RS: search for studies, series and instances (PS3.18 10.6), answered as DICOM JSON.

A search is C-FIND under another name: its match parameters become the C-FIND identifier of
:mod:`compacs.web.queries` and are answered by ``index.find`` with C-FIND's own matching
(PS3.4 C.2.2.2: wildcards, ranges, UID lists, the PN case rule). This module only does what
is QIDO's own:

- attributes named by keyword or by tag (``PatientName``, ``00100010``; PS3.18 8.3.4.1);
  a UID list is comma-separated there (``StudyInstanceUID=1.2,1.3``), a backslash in C-FIND;
- the UIDs of a nested path (``/studies/{study}/series``) are one more match key, so an
  unknown study is an empty search result, ``200 []``, as dcm4chee-arc answers
  (dcm4chee-arc-light#2098, #3426) and Orthanc's plugin does: the path scopes a search
  (10.6.1), it does not name a resource to retrieve;
- ``fuzzymatching`` (true/false, PS3.18 8.3.4.1): compacs performs no fuzzy semantic
  matching of person names, and applies C-FIND's matching either way; with ``true`` the
  answer carries the Warning the standard asks of a server without it
  (``299 {service}: "The fuzzymatching parameter is not supported. Only literal matching
  has been performed."``);
- ``includefield`` (repeated and/or comma-separated, ``all``; 8.3.4.3): more attributes to
  return, among those the index holds (others are left out);
- ``limit`` / ``offset`` (8.3.4.4): at most :data:`~compacs.web.queries.MAX_LIMIT` a page;
  without ``limit``, a truncated answer says so in a Warning;
- the return attributes of Tables 10.6.3-3 (study), -4 (series) and -5 (instance), as far
  as the index holds them, with the derived counts (IS, numbers in JSON) and
  ModalitiesInStudy; the tables of the levels above too when the path does not name them
  (10.6.3.3.2, 10.6.3.3.3); RetrieveURL (0008,1190) the WADO-RS URL of each match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from compacs.dicom.attributes import IMAGE, LEVELS, SERIES, STUDY
from compacs.index import Catalogue
from compacs.query import DERIVED_KEYS, RESPONSE_CHARACTER_SET, identifier_dataset, tag_and_vr
from compacs.web.queries import MAX_LIMIT, BadQuery, paging, search_keys
from compacs.web.queries import search as search_page

BadSearch = BadQuery
"""A search refused with 400; the message names the parameter."""

CONTROL = ("limit", "offset", "fuzzymatching", "includefield", "accept")
PATH_KEYS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")

# Return attributes per level: PS3.18 Tables 10.6.3-3, -4, -5, those the index holds
# (Timezone Offset From UTC, Performed Procedure Step Start Date/Time and Request
# Attributes Sequence it does not).
TABLES: dict[str, tuple[str, ...]] = {
    STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
    IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}
FUZZY_WARNING = (
    '"The fuzzymatching parameter is not supported. Only literal matching has been performed."'
)
MORE_WARNING = '"There are additional results that can be requested."'


@dataclass(frozen=True)
class Search:
    """One QIDO-RS search, checked: what to match, what to return, which page."""

    level: str
    matches: tuple[tuple[str, str], ...]
    """(keyword, value) pairs: the C-FIND identifier's match keys."""
    returns: tuple[str, ...]
    """Keywords answered for each match."""
    limit: int
    offset: int
    limit_given: bool
    fuzzy: bool


@dataclass(frozen=True)
class Found:
    body: bytes
    """The DICOM JSON array (PS3.18 F.2)."""
    warnings: tuple[str, ...]


def _depth(level: str) -> int:
    return LEVELS.index(level)


def available(level: str) -> tuple[str, ...]:
    """The keywords the index can answer at ``level``: indexed attributes of the level and
    above, and the derived attributes of the level and above (PS3.4 C.6.1.1)."""
    derived = [k for k, lv in DERIVED_KEYS.items() if _depth(lv) <= _depth(level)]
    return tuple(dict.fromkeys([*search_keys(level), *derived]))


def keyword_of(name: str, parameter: str) -> str:
    """The keyword of an attribute named by keyword or by tag (``00100020``, PS3.18
    8.3.4.1); :class:`BadSearch` naming ``parameter`` for anything else."""
    if "." in name:
        raise BadSearch(f"{parameter}: {name!r} is a sequence path; compacs matches no sequences")
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise BadSearch(f"{parameter}: {name!r} is neither a DICOM keyword nor a tag (ggggeeee)")
    return keyword


def _match_value(keyword: str, value: str) -> str:
    """A QIDO value as C-FIND's: a comma-separated UID list becomes a backslash-separated
    one (PS3.18 8.3.4.1 uid-list-matching, PS3.4 C.2.2.2.2)."""
    return value.replace(",", "\\") if dictionary_VR(keyword) == "UI" else value


def _fuzzy(values: list[str]) -> bool:
    if not values:
        return False
    value = values[-1].strip().lower()
    if value not in ("true", "false"):
        raise BadSearch(f"fuzzymatching={values[-1]!r}: expected true or false")
    return value == "true"


def _included(level: str, values: list[str]) -> list[str]:
    """The keywords ``includefield`` asks for and the index holds at ``level``; ``all``:
    every one it holds."""
    held = available(level)
    wanted: list[str] = []
    for value in values:
        for name in (n.strip() for n in value.split(",")):
            if name == "all":
                wanted += held
            elif name:
                wanted.append(keyword_of(name, "includefield"))
    return [k for k in wanted if k in held]


def _returned(level: str, in_path: dict[str, str]) -> list[str]:
    """The table of ``level``, and of each level above the path does not name, with the
    UIDs of the levels above always (they build RetrieveURL)."""
    named = {STUDY} if "study" in in_path else set()
    named |= {SERIES} if "series" in in_path else set()
    out = ["SpecificCharacterSet", "RetrieveURL", "StudyInstanceUID"]
    out += ["SeriesInstanceUID"] if _depth(level) >= _depth(SERIES) else []
    for table_level in (STUDY, SERIES, IMAGE)[: _depth(level)]:
        if table_level == level or table_level not in named:
            out += TABLES[table_level]
    return out


def parse(level: str, params: list[tuple[str, str]], in_path: dict[str, str]) -> Search:
    """The search ``params`` ask at ``level`` under the path's UIDs (``study``, ``series``);
    :class:`BadSearch` naming the parameter it refuses."""
    allowed = search_keys(level)
    given: dict[str, list[str]] = {}
    matches = [(PATH_KEYS[key], uid) for key, uid in in_path.items()]
    from_path = {keyword for keyword, _ in matches}
    for name, value in params:
        if name in CONTROL:
            given.setdefault(name, []).append(value)
            continue
        keyword = keyword_of(name, name)
        if keyword in from_path:
            raise BadSearch(f"{name}: the path names the {keyword} already")
        if keyword not in allowed:
            raise BadSearch(
                f"{name}: {keyword} is not a search key of {level.lower()} searches here; "
                f"known: {', '.join(allowed)}"
            )
        matches.append((keyword, _match_value(keyword, value)))
    page = [(k, v[-1]) for k, v in given.items() if k in ("limit", "offset")]
    limit, offset = paging(page, default_limit=MAX_LIMIT)
    returns = _returned(level, in_path) + [k for k, _ in matches]
    returns += _included(level, given.get("includefield", []))
    return Search(
        level=level,
        matches=tuple(matches),
        returns=tuple(dict.fromkeys(returns)),
        limit=limit,
        offset=offset,
        limit_given="limit" in given,
        fuzzy=_fuzzy(given.get("fuzzymatching", [])),
    )


def retrieve_url(service: str, level: str, item: dict[str, Any]) -> str:
    """The WADO-RS URL of a match (PS3.18 10.4.1): study, series or instance."""
    url = f"{service}/studies/{item['StudyInstanceUID']}"
    if _depth(level) >= _depth(SERIES):
        url += f"/series/{item['SeriesInstanceUID']}"
    if level == IMAGE:
        url += f"/instances/{item['SOPInstanceUID']}"
    return url


def _value(keyword: str, level: str, item: dict[str, Any], service: str) -> Any:
    if keyword == "SpecificCharacterSet":
        return RESPONSE_CHARACTER_SET  # the index holds decoded text
    if keyword == "InstanceAvailability":
        return "ONLINE"
    if keyword == "RetrieveURL":
        return retrieve_url(service, level, item)
    value = item.get(keyword)
    return None if value == "" else value


def dataset(search: Search, item: dict[str, Any], service: str) -> Dataset:
    """One match as a data set: every return key, valued from the index or empty."""
    elements = []
    for keyword in search.returns:
        tag, vr = tag_and_vr(keyword)
        elements.append((tag, vr, _value(keyword, search.level, item, service)))
    return identifier_dataset(sorted(elements))


def run(
    index: Catalogue, search: Search, service: str, *, pn_case_insensitive: bool = True
) -> Found:
    """The page of matches of ``search`` as DICOM JSON (PS3.18 F.2, through pydicom's
    ``to_json_dict``: PN as Alphabetic/Ideographic/Phonetic objects, IS/DS/US as numbers),
    and the Warning values to send with it. ``service``: the base URL of ``/dicom-web``."""
    params = [*search.matches, ("limit", str(search.limit)), ("offset", str(search.offset))]
    derived = [k for k in search.returns if k in DERIVED_KEYS]
    page = search_page(index, search.level, params, pn_case_insensitive, derived)
    body = json.dumps([dataset(search, item, service).to_json_dict() for item in page["items"]])
    warnings = []
    if search.fuzzy:
        warnings.append(f"299 {service}: {FUZZY_WARNING}")
    if page["more"] and not search.limit_given:
        warnings.append(f"299 {service}: {MORE_WARNING}")
    return Found(body.encode(), tuple(warnings))
