"""Which attributes the index keeps, per query level (PS3.4 C.6.1.1 and C.6.2.1).

The table is data: the index schema, attribute extraction at ingest and (later) C-FIND
matching are all derived from it. Each level holds its unique key and the required and
common optional keys of the Patient Root and Study Root information models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from compacs.dicom.uids import require_uid


@dataclass(frozen=True)
class IndexedAttribute:
    keyword: str
    column: str
    vr: str


PATIENT = "PATIENT"
STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)

INDEXED: dict[str, tuple[IndexedAttribute, ...]] = {
    PATIENT: (
        IndexedAttribute("PatientID", "patient_id", "LO"),  # unique key, C.6.1.1.2
        IndexedAttribute("IssuerOfPatientID", "issuer_of_patient_id", "LO"),
        IndexedAttribute("PatientName", "patient_name", "PN"),
        IndexedAttribute("PatientBirthDate", "patient_birth_date", "DA"),
        IndexedAttribute("PatientSex", "patient_sex", "CS"),
    ),
    STUDY: (
        IndexedAttribute("StudyInstanceUID", "study_uid", "UI"),  # unique key, C.6.1.1.3
        IndexedAttribute("StudyDate", "study_date", "DA"),
        IndexedAttribute("StudyTime", "study_time", "TM"),
        IndexedAttribute("AccessionNumber", "accession_number", "SH"),
        IndexedAttribute("StudyID", "study_id", "SH"),
        IndexedAttribute("StudyDescription", "study_description", "LO"),
        IndexedAttribute("ReferringPhysicianName", "referring_physician_name", "PN"),
    ),
    SERIES: (
        IndexedAttribute("SeriesInstanceUID", "series_uid", "UI"),  # unique key, C.6.1.1.4
        IndexedAttribute("Modality", "modality", "CS"),
        IndexedAttribute("SeriesNumber", "series_number", "IS"),
        IndexedAttribute("SeriesDescription", "series_description", "LO"),
        IndexedAttribute("BodyPartExamined", "body_part_examined", "CS"),
        IndexedAttribute("SeriesDate", "series_date", "DA"),
        IndexedAttribute("SeriesTime", "series_time", "TM"),
    ),
    IMAGE: (
        IndexedAttribute("SOPInstanceUID", "sop_instance_uid", "UI"),  # unique key, C.6.1.1.5
        IndexedAttribute("SOPClassUID", "sop_class_uid", "UI"),
        IndexedAttribute("InstanceNumber", "instance_number", "IS"),
        IndexedAttribute("ContentDate", "content_date", "DA"),
        IndexedAttribute("ContentTime", "content_time", "TM"),
        # What the compression policy matches on and the codecs need to know.
        IndexedAttribute("PhotometricInterpretation", "photometric_interpretation", "CS"),
        IndexedAttribute("Rows", "rows", "US"),
        IndexedAttribute("Columns", "columns", "US"),
        IndexedAttribute("NumberOfFrames", "number_of_frames", "IS"),
        IndexedAttribute("SamplesPerPixel", "samples_per_pixel", "US"),
        IndexedAttribute("BitsAllocated", "bits_allocated", "US"),
        IndexedAttribute("BitsStored", "bits_stored", "US"),
        IndexedAttribute("PixelRepresentation", "pixel_representation", "US"),
    ),
}

UNIQUE_KEY: dict[str, str] = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}

INTEGER_VRS = frozenset({"US"})  # the only binary VR indexed; 2 bytes
_TAGS: dict[str, int] = {
    attr.keyword: int(tag_for_keyword(attr.keyword) or 0)  # every keyword is in the dictionary
    for attrs in INDEXED.values()
    for attr in attrs
}


def _little_endian(ds: Dataset) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts != "1.2.840.10008.1.2.2"


def _text(value: Any) -> str | None:
    """The value as the index stores it: str, multi-values joined by backslash, or None."""
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text


# Text VRs whose bytes may depend on Specific Character Set (PS3.5 6.1.2.3)
CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})


def _value(ds: Dataset, attr: IndexedAttribute, little_endian: bool) -> Any:
    """One attribute's index value; a value that cannot be decoded is indexed as absent.

    Reads the raw element and decodes the common case (ASCII text, binary integers)
    directly: pydicom's full conversion costs ~50 us an element on the C-STORE path.
    Non-ASCII text, or ISO 2022 escapes, go through pydicom's character-set decoding.
    """
    tag = _TAGS[attr.keyword]
    try:
        raw = ds.get_item(tag)
        if raw is None:
            return None
        value = raw.value
        if isinstance(value, bytes):
            if attr.vr in INTEGER_VRS:
                if len(value) < 2:
                    return None
                return int.from_bytes(value[:2], "little" if little_endian else "big")
            if attr.vr not in CHARSET_VRS or (value.isascii() and b"\x1b" not in value):
                text = value.decode("ascii", "replace").strip(" \x00")
                return text or None
        value = ds[tag].value  # pydicom's conversion, character sets included
        if value is None or value == "":
            return None
        if attr.vr in INTEGER_VRS:
            return int(value)
        return _text(value)
    except (TypeError, ValueError, LookupError, AttributeError):
        return None


def extract(ds: Dataset) -> dict[str, dict[str, Any]]:
    """The indexed attributes of ``ds``, per level, keyed by column name.

    The UID keys are validated here (PS3.5 9.1) because they become storage keys;
    :class:`~compacs.dicom.uids.InvalidUID` names the attribute that failed.
    """
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        require_uid(ds.get(keyword), keyword)
    little_endian = _little_endian(ds)
    out: dict[str, dict[str, Any]] = {}
    for level, attributes in INDEXED.items():
        row: dict[str, Any] = {}
        for attr in attributes:
            row[attr.column] = _value(ds, attr, little_endian)
        if level == PATIENT and row["patient_id"] is None:
            # Type 2: absent or empty is unknown, an ID of nobody (index.schema.patient_key)
            row["patient_id"] = ""
        out[level] = row
    return out
