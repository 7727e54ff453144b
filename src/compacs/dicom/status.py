"""DIMSE status codes: the one table of every code compacs sends or interprets, and the one
function that classifies any code (PS3.7 Annex C; PS3.4 B.2.3, C.4, J.3).

Like pynetdicom's ``status.py`` (one table, one ``code_to_category``): nothing else in
compacs compares status codes with ranges or lists of its own.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Category(StrEnum):
    """Status types, PS3.7 C.1.2."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


class Status(IntEnum):
    """Each code with the standard's name and where it is defined (``meaning``, ``section``).

    One member per code: where services give a code different names (0xB000), the
    meaning names each."""

    meaning: str
    section: str

    def __new__(cls, code: int, meaning: str, section: str) -> Status:
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        member.section = section
        return member

    SUCCESS = 0x0000, "Success", "PS3.7 C.1.2"
    # Warnings (PS3.7 C.1.2: 0x0001, 0xBxxx, and the general 0x0107, 0x0116)
    WARNING = 0x0001, "Warning: requested optional attributes are not supported", "PS3.7 C.1.2"
    ATTRIBUTE_LIST_ERROR = 0x0107, "Attribute List Error", "PS3.7 Annex C"
    ATTRIBUTE_OUT_OF_RANGE = 0x0116, "Attribute Value Out of Range", "PS3.7 Annex C"
    COERCION = (
        0xB000,
        "Coercion of Data Elements (C-STORE); Sub-operations Complete - One or more "
        "Failures or Warnings (C-MOVE, C-GET)",
        "PS3.4 B.2.3, C.4.2.1.5",
    )
    ELEMENTS_DISCARDED = 0xB006, "Elements Discarded", "PS3.4 B.2.3"
    DATASET_MISMATCH_WARNING = 0xB007, "Data Set does not match SOP Class", "PS3.4 B.2.3"
    # Failures, general (PS3.7 Annex C)
    PROCESSING_FAILURE = 0x0110, "Processing Failure", "PS3.7 Annex C"
    NO_SUCH_OBJECT = 0x0112, "No Such SOP Instance", "PS3.7 Annex C; PS3.4 J.3.3.1.1"
    NO_SUCH_EVENT_TYPE = 0x0113, "No Such Event Type", "PS3.7 Annex C"
    CLASS_INSTANCE_CONFLICT = 0x0119, "Class-Instance Conflict", "PS3.7 Annex C"
    MISSING_ATTRIBUTE = 0x0120, "Missing Attribute", "PS3.7 Annex C"
    NO_SUCH_ACTION = 0x0123, "No Such Action", "PS3.7 Annex C"
    NOT_AUTHORIZED = 0x0124, "Refused: Not Authorized", "PS3.7 Annex C"
    RESOURCE_LIMITATION = 0x0213, "Resource Limitation", "PS3.7 Annex C"
    # Failures, service class specific (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
    OUT_OF_RESOURCES = 0xA700, "Refused: Out of Resources", "PS3.4 B.2.3, C.4.1.1.4"
    OUT_OF_RESOURCES_MATCHES = (
        0xA701,
        "Out of Resources: Unable to calculate number of matches",
        "PS3.4 C.4.2.1.5",
    )
    OUT_OF_RESOURCES_SUBOPS = (
        0xA702,
        "Out of Resources: Unable to perform sub-operations",
        "PS3.4 C.4.2.1.5",
    )
    MOVE_DESTINATION_UNKNOWN = 0xA801, "Refused: Move Destination unknown", "PS3.4 C.4.2.1.5"
    DATASET_MISMATCH = 0xA900, "Identifier / Data Set does not match SOP Class", "PS3.4 B.2.3"
    CANNOT_UNDERSTAND = 0xC000, "Cannot understand / Unable to process", "PS3.4 B.2.3, C.4.1.1.4"
    INVALID_UID = 0xC001, "Cannot understand: a required UID is missing or invalid", "PS3.4 B.2.3"
    STUDY_UID_MISMATCH = (
        0xC409,
        "Cannot understand: Study Instance UID differs from the Store request's (STOW-RS; "
        "dcm4chee-arc's DIFF_STUDY_INSTANCE_UID)",
        "PS3.18 I.2.2 (Cxxx, implementation specific)",
    )
    # Cancel and pending (PS3.7 C.1.2)
    CANCEL = 0xFE00, "Cancel: matching or sub-operations terminated", "PS3.4 C.4.1.1.4"
    PENDING = 0xFF00, "Pending: matches or sub-operations are continuing", "PS3.4 C.4.1.1.4"
    PENDING_WARNING = (
        0xFF01,
        "Pending: matches are continuing, optional keys not supported",
        "PS3.4 C.4.1.1.4",
    )


def category(code: int) -> Category:
    """The status type of any code, listed above or not (PS3.7 C.1.2): 0x0000 success;
    0x0001, 0x0107, 0x0116 and 0xB000-0xBFFF warning; 0xFE00 cancel; 0xFF00 and 0xFF01
    pending; everything else failure."""
    if code == Status.SUCCESS:
        return Category.SUCCESS
    if code in (Status.WARNING, Status.ATTRIBUTE_LIST_ERROR, Status.ATTRIBUTE_OUT_OF_RANGE):
        return Category.WARNING
    if 0xB000 <= code <= 0xBFFF:
        return Category.WARNING
    if code == Status.CANCEL:
        return Category.CANCEL
    if code in (Status.PENDING, Status.PENDING_WARNING):
        return Category.PENDING
    return Category.FAILURE


def done(code: int) -> bool:
    """Whether the peer performed the operation: success or warning (PS3.7 C.1.2; for
    C-STORE, PS3.4 B.2.3: a warning status means the instance is stored, perhaps coerced)."""
    return category(code) in (Category.SUCCESS, Category.WARNING)


ERROR_COMMENT_LENGTH = 64
"""Error Comment (0000,0902) is LO: at most 64 characters (PS3.7 C.4.2, Annex E;
PS3.5 Table 6.2-1)."""


def error_comment(text: str) -> str:
    """``text`` as an Error Comment value: cut to :data:`ERROR_COMMENT_LENGTH` characters."""
    return text[:ERROR_COMMENT_LENGTH]


def describe(code: int) -> str:
    """``0xB123 (warning)`` or ``0xA700 Refused: Out of Resources`` for logs and errors."""
    try:
        return f"0x{code:04X} {Status(code).meaning}"  # type: ignore[call-arg]  # a lookup
    except ValueError:
        return f"0x{code:04X} ({category(code)})"
