"""DIMSE status codes compacs answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # PS3.4 Table B.2-1, C-STORE failures
    OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (disk full, index unavailable)
    DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class / the request
    CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (unparseable data set)
    INVALID_UID = 0xC001  # Error: Cannot understand, a required UID is missing or invalid
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2: Processing failure
