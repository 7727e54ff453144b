"""What a compressed stream says about itself, read from its marker segments.

JPEG (ISO 10918-1 B.1) and JPEG-LS (ISO 14495-1 C.2) share the marker-segment syntax:
the frame header gives the sample precision P, the JPEG-LS scan header gives NEAR. The
JPEG 2000 / HTJ2K main header (ISO 15444-1 A.5-A.6) gives the coding style (COD): whether
the 9-7 irreversible wavelet was used. No pixel is decoded here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.encaps import generate_fragments

_J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    }
)
_SOF55 = 0xF7  # JPEG-LS frame header (ISO 14495-1 C.2.2)
_SOS = 0xDA
# ISO 10918-1 B.1.1.3: SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC); lossless: C3/C7/CB/CF
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})


def jpeg_segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, segment body) of a JPEG / JPEG-LS stream from SOI up to and including SOS
    (ISO 10918-1 B.1.1.2: each marker but SOI/RSTn/EOI is followed by its length)."""
    if not stream.startswith(b"\xff\xd8"):
        return
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        yield marker, stream[pos + 4 : pos + 2 + length]
        if marker == _SOS:
            return
        pos += 2 + length


def jls_precision(stream: bytes) -> int | None:
    """Sample precision P of a JPEG-LS stream's SOF55 (ISO 14495-1 C.2.2), or None."""
    for marker, body in jpeg_segments(stream):
        if marker == _SOF55 and body:
            return body[0]
    return None


def _jls_near(stream: bytes) -> int | None:
    """NEAR of the first JPEG-LS scan (ISO 14495-1 C.2.3: after Ns and Ns x (Ci, Tmi))."""
    for marker, body in jpeg_segments(stream):
        if marker == _SOS and body:
            at = 1 + 2 * body[0]
            return body[at] if at < len(body) else None
    return None


@dataclass(frozen=True)
class J2kCoding:
    """The COD marker segment's fields that matter here (ISO 15444-1 A.6.1)."""

    mct: bool
    """SGcod multiple component transform: RCT/ICT on the first three components."""
    reversible: bool
    """SPcod transformation: 1 = 5-3 reversible, 0 = 9-7 irreversible."""


def j2k_coding(codestream: bytes) -> J2kCoding | None:
    """The COD of a JPEG 2000 / HTJ2K main header (SOC, SIZ, ... up to SOT), or None."""
    pos = codestream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (A.4.1, A.5.1)
    if pos < 0:
        return None
    pos += 2
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker in (0xFF90, 0xFF93):  # SOT, SOD: the main header is over
            return None
        if marker == 0xFF52 and length >= 12:
            # Lcod(2) Scod(1) SGcod: order(1) layers(2) MCT(1); SPcod: levels(1) xcb(1)
            # ycb(1) style(1) transformation(1)
            body = codestream[pos + 4 : pos + 2 + length]
            return J2kCoding(mct=body[4] == 1, reversible=body[9] == 1)
        pos += 2 + length
    return None


def stream_is_lossy(syntax: str, first_fragment: bytes) -> bool:
    """Whether the stream itself shows lossy coding (for Lossy Image Compression, PS3.3
    C.7.6.1.1.5): J2K/HTJ2K with the 9-7 irreversible wavelet, JPEG-LS with NEAR > 0, a
    JPEG process other than 14. False when the stream does not tell."""
    if syntax in _J2K_SYNTAXES:
        coding = j2k_coding(first_fragment)
        return coding is not None and not coding.reversible
    if syntax in JPEG_LS_SYNTAXES:
        return bool(_jls_near(first_fragment))
    if syntax in _JPEG_SYNTAXES:
        for marker, _ in jpeg_segments(first_fragment):
            if marker in _JPEG_SOF:
                return marker not in _JPEG_LOSSLESS_SOF
    return False


def first_fragment(pixel_data: bytes) -> bytes:
    """The first fragment of encapsulated Pixel Data (PS3.5 A.4), b"" when there is none.
    The first item is the Basic Offset Table, possibly empty: it is skipped."""
    items = generate_fragments(pixel_data)
    next(items, None)
    return next(items, b"")


def jls_misread_reason(
    syntax: str, bits_allocated: int, bits_stored: int, signed: bool, fragment: bytes
) -> str | None:
    """Why other decoders misread this JPEG-LS stream of signed pixels, or None.

    JPEG-LS carries no sign (PS3.5 8.2.3): pydicom sign-extends at the precision P, DCMTK
    at Bits Stored. A stream of signed samples with Bits Stored < P <= Bits Allocated (what
    compacs wrote before it used P = Bits Stored) reads as large positive values in pydicom
    unless its samples were sign-extended to P; re-encoding with P = Bits Stored is right
    for every reader either way."""
    if syntax not in JPEG_LS_SYNTAXES or not signed or bits_stored >= bits_allocated:
        return None
    precision = jls_precision(fragment)
    if precision is None or precision == bits_stored:
        return None
    return f"JPEG-LS precision P={precision} for signed Bits Stored {bits_stored} (PS3.5 8.2.3)"
