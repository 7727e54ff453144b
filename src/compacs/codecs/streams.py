"""What a compressed stream says about itself, read from its marker segments.

JPEG (ISO 10918-1 B.1) and JPEG-LS (ISO 14495-1 C.2) share the marker-segment syntax:
the frame header gives the sample precision P and the geometry, the JPEG-LS scan header
gives NEAR. The JPEG 2000 / HTJ2K main header (ISO 15444-1 A.5-A.6) gives the geometry
(SIZ) and the coding style (COD): whether the 9-7 irreversible wavelet was used, the
progression order and the decomposition levels; its TLM and the tile-part headers (SOT,
A.4.2, A.7.1) show how the stream is divided, which HTJ2K Lossless RPCL constrains. The
JPEG XL SizeHeader (ISO 18181-1) gives rows and columns. No pixel is decoded here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.encaps import generate_fragments

J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    }
)
JPEG_XL_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
)
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
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
    progression: int
    """SGcod progression order (Table A.16): 0 LRCP, 1 RLCP, 2 RPCL, 3 PCRL, 4 CPRL."""
    levels: int
    """SPcod number of decomposition levels (the stream has levels + 1 resolutions)."""


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
            return J2kCoding(
                mct=body[4] == 1, reversible=body[9] == 1, progression=body[1], levels=body[5]
            )
        pos += 2 + length
    return None


_SOT, _TLM, _EOC = 0xFF90, 0xFF55, 0xFFD9
PROGRESSIONS = ("LRCP", "RLCP", "RPCL", "PCRL", "CPRL")  # ISO 15444-1 Table A.16
RPCL = PROGRESSIONS.index("RPCL")


@dataclass(frozen=True)
class J2kTileParts:
    """How a codestream is divided into tile-parts (ISO 15444-1 A.4.2 SOT, A.7.1 TLM)."""

    tlm: bool
    """A TLM (tile-part lengths) marker segment in the main header."""
    parts: tuple[int, ...]
    """Isot, the tile index, of each tile-part in codestream order."""

    def per_tile(self) -> dict[int, int]:
        """Number of tile-parts of each tile."""
        counts: dict[int, int] = {}
        for tile in self.parts:
            counts[tile] = counts.get(tile, 0) + 1
        return counts


def j2k_tile_parts(codestream: bytes) -> J2kTileParts | None:
    """The TLM presence and the tile-parts of a J2K / HTJ2K codestream, or None when its
    marker segments do not chain up. Tile-parts are followed by their Psot (A.4.2: the
    length from the SOT marker to the end of the tile-part; 0 only for the last one)."""
    pos = codestream.find(b"\xff\x4f\xff\x51")
    if pos < 0:
        return None
    pos, tlm = pos + 2, False
    while pos + 4 <= len(codestream):  # main header: marker segments up to the first SOT
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker == _SOT:
            break
        if marker >> 8 != 0xFF or length < 2:
            return None
        tlm = tlm or marker == _TLM
        pos += 2 + length
    parts: list[int] = []
    while pos + 12 <= len(codestream):
        marker, _, tile, psot = struct.unpack_from(">HHHI", codestream, pos)
        if marker == _EOC:
            break
        if marker != _SOT:
            return None
        parts.append(tile)
        if psot == 0:  # the last tile-part runs to EOC
            break
        pos += psot
    return J2kTileParts(tlm, tuple(parts))


# PS3.5 8.2.14 / A.4.4 (Supplement 235): the base (lowest) resolution of an HTJ2K Lossless
# RPCL stream is at most 64 samples wide and high
RPCL_BASE_RESOLUTION = 64


def rpcl_decompositions(rows: int, columns: int) -> int:
    """The fewest decomposition levels that bring the base resolution of a rows x columns
    image to RPCL_BASE_RESOLUTION or less (each level halves, rounding up: ISO 15444-1
    B.5)."""
    levels, side = 0, max(rows, columns)
    while side > RPCL_BASE_RESOLUTION:
        side, levels = (side + 1) // 2, levels + 1
    return levels


def htj2k_rpcl_refusal(codestream: bytes, rows: int, columns: int) -> str | None:
    """Why ``codestream`` may not be labelled HTJ2K Lossless RPCL (1.2.840.10008.1.2.4.202),
    or None. PS3.5 8.2.14 / A.4.4 (Supplement 235) ask of it: the reversible 5-3 wavelet,
    RPCL progression, a base resolution of at most 64 x 64, a TLM marker segment and one
    tile-part per resolution (so that a reader fetches the resolutions it shows, in
    order, by the lengths TLM gives)."""
    coding, division = j2k_coding(codestream), j2k_tile_parts(codestream)
    if coding is None or division is None:
        return "no readable COD / tile-part headers (ISO 15444-1 A.4-A.6)"
    problems = []
    if not coding.reversible:
        problems.append("the 9-7 irreversible wavelet")
    if coding.progression != RPCL:
        name = PROGRESSIONS[coding.progression] if coding.progression < 5 else "unknown"
        problems.append(f"progression order {name}, not RPCL")
    needed = rpcl_decompositions(rows, columns)
    if coding.levels < needed:
        base = f"a base resolution of at most {RPCL_BASE_RESOLUTION}"
        problems.append(f"{coding.levels} decomposition levels, {needed} needed for {base}")
    if not division.tlm:
        problems.append("no TLM marker segment")
    resolutions = coding.levels + 1
    counts = sorted(set(division.per_tile().values()))
    if counts != [resolutions]:
        problems.append(f"{counts} tile-part(s) per tile, not one per resolution ({resolutions})")
    if not problems:
        return None
    return "not HTJ2K Lossless RPCL (PS3.5 8.2.14, A.4.4): " + "; ".join(problems)


Geometry = tuple[int, int, int | None]
"""(rows, columns, components) a stream's header declares; components None if not read."""


def jpeg_geometry(stream: bytes) -> Geometry | None:
    """ISO 10918-1 B.2.2 / ISO 14495-1 C.2.2 frame header: P, Y, X, Nf."""
    for marker, body in jpeg_segments(stream):
        if marker in _JPEG_SOF | {_SOF55} and len(body) >= 6:
            _, rows, columns, components = struct.unpack_from(">BHHB", body)
            return rows, columns, components
    return None


def j2k_geometry(stream: bytes) -> Geometry | None:
    """ISO 15444-1 A.5.1 SIZ: Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, 4 tile fields, Csiz."""
    pos = stream.find(b"\xff\x4f\xff\x51")
    if pos < 0 or pos + 42 > len(stream):
        return None
    x, y, x0, y0 = struct.unpack_from(">IIII", stream, pos + 8)
    (components,) = struct.unpack_from(">H", stream, pos + 40)
    return y - y0, x - x0, components


class _Bits:
    """ISO 18181-1 9.2: fields are read least significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data[:16], "little")
        self.pos = 0

    def u(self, n: int) -> int:
        out = (self.value >> self.pos) & ((1 << n) - 1)
        self.pos += n
        return out


_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl_dimension(bits: _Bits, small: bool) -> int:
    """ISO 18181-1 SizeHeader: (u(5)+1)*8 when small, else U32(1+u(9), 1+u(13), 1+u(18),
    1+u(30))."""
    if small:
        return (bits.u(5) + 1) * 8
    return 1 + bits.u((9, 13, 18, 30)[bits.u(2)])


def _jxl_codestream(stream: bytes) -> bytes | None:
    """The codestream of a bare JPEG XL stream or of its container's jxlc / first jxlp box
    (ISO 18181-2)."""
    if stream.startswith(b"\xff\x0a"):
        return stream
    pos = 0
    while pos + 8 <= len(stream):
        size, kind = struct.unpack_from(">I4s", stream, pos)
        header = 8
        if size == 1 and pos + 16 <= len(stream):
            (size,) = struct.unpack_from(">Q", stream, pos + 8)
            header = 16
        if kind == b"jxlc":
            return stream[pos + header :]
        if kind == b"jxlp":
            return stream[pos + header + 4 :]  # after the 4-byte part index
        if size < header:
            return None
        pos += size
    return None


def jxl_geometry(stream: bytes) -> Geometry | None:
    codestream = _jxl_codestream(stream)
    if codestream is None or not codestream.startswith(b"\xff\x0a"):
        return None
    bits = _Bits(codestream[2:])
    small = bool(bits.u(1))
    rows = _jxl_dimension(bits, small)
    ratio = bits.u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        return rows, rows * num // den, None
    return rows, _jxl_dimension(bits, small), None


def stream_is_lossy(syntax: str, first_fragment: bytes) -> bool:
    """Whether the stream itself shows lossy coding (for Lossy Image Compression, PS3.3
    C.7.6.1.1.5): J2K/HTJ2K with the 9-7 irreversible wavelet, JPEG-LS with NEAR > 0, a
    JPEG process other than 14, a JPEG recompressed by JPEG XL (PS3.5 8.2.15: libjxl
    recompresses DCT JPEG only). False when the stream does not tell."""
    if syntax == JPEG_XL_JPEG_RECOMPRESSION:
        return True
    if syntax in J2K_SYNTAXES:
        coding = j2k_coding(first_fragment)
        return coding is not None and not coding.reversible
    if syntax in JPEG_LS_SYNTAXES:
        return bool(_jls_near(first_fragment))
    if syntax in JPEG_SYNTAXES:
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
