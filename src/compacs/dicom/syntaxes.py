"""The transfer-syntax table (PS3.5 section 10, Annex A; PS3.6 Table A-1).

One row per syntax compacs knows. Negotiation (which syntaxes the node accepts), stats
(names per stored syntax) and, later, transcoding and policy validation all read this
table, so a syntax is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferSyntax:
    uid: str
    name: str
    encapsulated: bool
    lossless: bool
    """True when every stream in this syntax is lossless (.90 is, .91 may not be)."""
    lossy_method: str | None = None
    """Defined Term for Lossy Image Compression Method (0028,2114), PS3.3 C.7.6.1.1.5.1."""
    experimental: bool = False


TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    # Native (uncompressed), PS3.5 A.1-A.3, A.5
    TransferSyntax("1.2.840.10008.1.2", "Implicit VR Little Endian", False, True),
    TransferSyntax("1.2.840.10008.1.2.1", "Explicit VR Little Endian", False, True),
    TransferSyntax("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", False, True),
    TransferSyntax("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)", False, True),
    # Encapsulated, PS3.5 A.4
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", True, True),
    TransferSyntax(
        "1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", True, False, "ISO_10918_1"
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", True, False, "ISO_10918_1"
    ),
    TransferSyntax("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1 (Process 14, SV1)", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", True, False, "ISO_14495_1"),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless Only", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000", True, False, "ISO_15444_1"),
    TransferSyntax("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", True, True),
    TransferSyntax("1.2.840.10008.1.2.4.203", "HTJ2K", True, False, "ISO_15444_15"),
    TransferSyntax("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", True, True, experimental=True),
    TransferSyntax(
        "1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", True, True, experimental=True
    ),
    TransferSyntax(
        "1.2.840.10008.1.2.4.112", "JPEG XL", True, False, "ISO_18181_1", experimental=True
    ),
)

BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TRANSFER_SYNTAXES}

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def accepted_for_storage() -> list[str]:
    """Every syntax the C-STORE SCP accepts, uncompressed first (PS3.7 D.3.3.2 preference)."""
    return [ts.uid for ts in TRANSFER_SYNTAXES]


def name_of(uid: str) -> str:
    ts = BY_UID.get(uid)
    return ts.name if ts else uid
