"""The transfer-syntax table (PS3.5 section 10, Annex A; PS3.6 Table A-1).

One row per syntax compacs knows. Negotiation (which syntaxes the node accepts), stats
(names per stored syntax) and, later, transcoding and policy validation all read this
table, so a syntax is added here once.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    # PS3.5 8.2.15: the JPEG's bits kept, so its image stays lossy (ISO_10918_1)
    TransferSyntax(
        "1.2.840.10008.1.2.4.111",
        "JPEG XL JPEG Recompression",
        True,
        False,
        "ISO_10918_1",
        experimental=True,
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
NATIVE_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
"""The native (uncompressed) little endian syntaxes compacs writes, preferred first: a
peer's fallback when it accepts no compressed syntax (PS3.5 A.1, A.2)."""


def acceptance_order(proposals: Sequence[Sequence[str]]) -> list[str]:
    """Every syntax of ``proposals`` once, in the order compacs prefers to accept them.

    ``proposals`` are the transfer syntax lists of the presentation contexts a requestor
    proposed for one abstract syntax, each most preferred first (PS3.8 9.3.2.2; the
    acceptor chooses one per context, PS3.8 7.1.1.13). The order:

    1. a context's first syntax when it is encapsulated: the requestor's own compressed
       data, sent without a transcode (DCMTK and dcm4che propose the file's syntax first);
       a lossy one only when every context offering it lists it first, so that a lossy
       syntax never wins over a native one the requestor preferred;
    2. Explicit VR Little Endian: it carries the VR of every element, private ones
       included (PS3.5 7.1.2), which Implicit VR loses (PS3.5 7.1.3, A.1);
    3. the other lossless syntaxes, in the requestor's order;
    4. Implicit VR Little Endian;
    5. the lossy ones, in the requestor's order: after every native syntax.
    """
    offered = list(dict.fromkeys(uid for syntaxes in proposals for uid in syntaxes))
    leaders = [
        syntaxes[0]
        for syntaxes in proposals
        if syntaxes and _encapsulated(syntaxes[0]) and _may_lead(syntaxes[0], proposals)
    ]
    explicit = [uid for uid in offered if uid == EXPLICIT_VR_LITTLE_ENDIAN]
    lossless = [uid for uid in offered if _lossless(uid) and uid != IMPLICIT_VR_LITTLE_ENDIAN]
    lossy = [uid for uid in offered if not _lossless(uid)]
    implicit = [uid for uid in offered if uid == IMPLICIT_VR_LITTLE_ENDIAN]
    return list(dict.fromkeys(leaders + explicit + lossless + implicit + lossy))


def _encapsulated(uid: str) -> bool:
    ts = BY_UID.get(uid)
    return ts is not None and ts.encapsulated


def _lossless(uid: str) -> bool:
    """Unknown syntaxes count as lossy: they never come before a known lossless one."""
    ts = BY_UID.get(uid)
    return ts is not None and ts.lossless


def _may_lead(uid: str, proposals: Sequence[Sequence[str]]) -> bool:
    """A lossless syntax may always lead; a lossy one only when no context offering it
    prefers another syntax."""
    return _lossless(uid) or all(s[0] == uid for s in proposals if uid in s)


def accepted_for_storage() -> list[str]:
    """Every syntax the C-STORE SCP accepts, in the order of :func:`acceptance_order`
    (Explicit VR Little Endian first, lossy syntaxes last). Each association is negotiated with
    this order applied to what its requestor proposed (compacs.net.negotiation)."""
    return acceptance_order([[ts.uid for ts in TRANSFER_SYNTAXES]])


def name_of(uid: str) -> str:
    ts = BY_UID.get(uid)
    return ts.name if ts else uid
