"""DICOM Part 10 file framing (PS3.10 7.1) and a cheap structural check of received data."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from compacs import __version__
from compacs.dicom.syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

PREAMBLE = b"\x00" * 128 + b"DICM"
# compacs' Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2)
IMPLEMENTATION_CLASS_UID = "2.25.41132603647913935187422880364919037599"
IMPLEMENTATION_VERSION_NAME = f"COMPACS_{__version__}"[:16]

LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
"""Explicit VRs with a reserved field and a 4-byte Value Length (PS3.5 7.1.2)."""
_LONG_VRS = frozenset(vr.encode("ascii") for vr in LONG_LENGTH_VRS)


def read(data: bytes, *, pixels: bool = True) -> Dataset:
    """The Part 10 object ``data`` (PS3.10 7.1) as pydicom reads it; ``pixels=False`` stops
    before Pixel Data (the header only, for indexing and metadata)."""
    return dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


def write(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 object: preamble, File Meta Information and data set
    (PS3.10 7.1), pydicom checking the File Meta it needs."""
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2), value padded to even length."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xL", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str = ""
) -> bytes:
    """Preamble, prefix and File Meta Information group (PS3.10 7.1) for a received data set.

    Encoded by hand: it is built for every C-STORE, and the UIDs were validated before.
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0002, 0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0002, 0x0010, b"UI", transfer_syntax.encode("ascii")),
            _element(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0002, 0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            _element(0x0002, 0x0016, b"AE", source_ae.encode("ascii")) if source_ae else b"",
        )
    )
    return PREAMBLE + struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + body


class JoinedReader(io.RawIOBase):
    """A read-only, seekable file over buffers read one after the other, never joined:
    a received object is its File Meta header and the data set as pynetdicom received it,
    and joining them would copy the whole data set once more."""

    name = ""  # pydicom reads a file object's name; this one has none

    def __init__(self, *parts: bytes) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._size = sum(len(p) for p in self._parts)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done, start = 0, 0
        for part in self._parts:
            end = start + len(part)
            if done < len(out) and start <= self._pos < end:
                chunk = part[self._pos - start : self._pos - start + len(out) - done]
                out[done : done + len(chunk)] = chunk
                done += len(chunk)
                self._pos += len(chunk)
            start = end
        return done


def joined(*parts: bytes) -> io.BufferedReader:
    """A buffered file over ``parts`` (see :class:`JoinedReader`), for ``dcmread``."""
    return io.BufferedReader(JoinedReader(*parts))


class Malformed(ValueError):
    """The encoded data set does not hold together (PS3.5 section 7)."""


class TooLarge(ValueError):
    """The data set is larger than the node accepts (a deflated one: once inflated)."""


def inflate(deflated: bytes, limit: int) -> bytes:
    """The deflated data set (PS3.5 A.5: raw deflate, no zlib header) inflated, stopped
    as soon as it passes ``limit`` bytes: a megabyte that inflates to gigabytes costs
    ``limit``, never what it claims. Raises TooLarge, or zlib.error on bad input."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(deflated, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"deflated data set inflates to more than {limit} bytes")
    return out + inflater.flush()


def deflate(data_set: bytes) -> bytes:
    """A data set deflated for Deflated Explicit VR Little Endian (PS3.5 A.5: raw deflate,
    no zlib header), padded to even length."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = compressor.compress(data_set) + compressor.flush()
    return out + b"\0" if len(out) % 2 else out


@dataclass(frozen=True)
class FileMeta:
    """What a Part 10 file's File Meta Information (PS3.10 7.1) says about its data set."""

    transfer_syntax: str
    """Transfer Syntax UID (0002,0010)."""
    sop_class_uid: str
    """Media Storage SOP Class UID (0002,0002); empty when absent."""
    sop_instance_uid: str
    """Media Storage SOP Instance UID (0002,0003); empty when absent."""
    offset: int
    """Where the data set starts."""


_META_UIDS = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax"}


def file_meta(data: bytes) -> FileMeta:
    """The File Meta Information of the Part 10 file ``data``, read element by element,
    Explicit VR Little Endian (PS3.5 7.1.2), up to the first element outside group 0002.
    ValueError when ``data`` is no Part 10 file or has no Transfer Syntax UID."""
    if data[128:132] != PREAMBLE[128:]:
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    at, uids = len(PREAMBLE), {}
    while at + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, at)
        if group != 0x0002:
            break
        vr = data[at + 4 : at + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, at + 8)
            value_at = at + 12
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            value_at = at + 8
        if element in _META_UIDS:
            value = data[value_at : value_at + length].rstrip(b"\0 ")
            uids[_META_UIDS[element]] = value.decode("ascii", "replace")
        at = value_at + length
    if not uids.get("transfer_syntax"):
        raise ValueError("the File Meta Information has no Transfer Syntax UID (0002,0010)")
    return FileMeta(
        uids["transfer_syntax"],
        uids.get("sop_class_uid", ""),
        uids.get("sop_instance_uid", ""),
        min(at, len(data)),
    )


def split(data: bytes) -> tuple[str, int]:
    """The Transfer Syntax UID of the Part 10 file ``data`` and the offset of its data set
    (:func:`file_meta`)."""
    meta = file_meta(data)
    return meta.transfer_syntax, meta.offset


def structure_problem(
    buf: bytes, start: int, transfer_syntax: str, max_size: int = 2**40
) -> str | None:
    """Why the data set encoded in ``buf[start:]`` is malformed, or None when it is whole.

    pydicom reads short values, garbage and truncated files without complaint; an archive
    must not acknowledge what it could not give back. This walks every element header
    (PS3.5 7.1), every undefined-length sequence and item (7.5) and the encapsulated pixel
    data fragments (A.4), checking that each value fits in what was received. It never
    decodes a value, so it costs little on the C-STORE path. A data set over ``max_size``
    bytes (a deflated one: as it inflates) raises TooLarge.
    """
    if len(buf) - start > max_size:
        raise TooLarge(f"data set of {len(buf) - start} bytes is over the {max_size} accepted")
    try:
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            buf, start = inflate(buf[start:], max_size), 0
        little = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
        implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        first_vr = buf[start + 4 : start + 6]
        if not implicit and len(buf) > start and not (first_vr.isalpha() and first_vr.isupper()):
            raise Malformed("data set is not in Explicit VR, the negotiated transfer syntax")
        _Walker(buf, little).elements(start, len(buf), implicit=implicit, in_item=False)
    except Malformed as exc:
        return str(exc)
    except zlib.error as exc:
        return f"deflated data set cannot be inflated: {exc}"
    except RecursionError:
        return "sequences nested too deeply"
    return None


class _Walker:
    def __init__(self, buf: bytes, little: bool) -> None:
        self.buf = buf
        self.endian = "<" if little else ">"

    def _header(self, pos: int, end: int) -> tuple[int, int]:
        if pos + 8 > end:
            raise Malformed(f"data set ends inside an element header at byte {pos}")
        return struct.unpack_from(self.endian + "HH", self.buf, pos)

    def elements(self, pos: int, end: int, *, implicit: bool, in_item: bool) -> int:
        """Walk elements up to ``end`` (or an Item Delimitation Item when ``in_item``)."""
        buf, endian = self.buf, self.endian
        while pos < end:
            group, element = self._header(pos, end)
            if group == 0xFFFE:
                if in_item and element == 0xE00D:
                    return pos + 8
                raise Malformed(f"unexpected delimiter (FFFE,{element:04X}) at byte {pos}")
            vr: bytes | None = buf[pos + 4 : pos + 6]
            assert vr is not None
            if implicit or not (vr.isalpha() and vr.isupper()):
                # implicit VR, or an explicit-VR stream that wrote this element implicitly
                # (seen in the wild, read by pydicom): tag, then a 4-byte length
                (length,) = struct.unpack_from(endian + "L", buf, pos + 4)
                pos, vr = pos + 8, None
            elif vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Malformed(f"data set ends inside an element header at byte {pos}")
                (length,) = struct.unpack_from(endian + "L", buf, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from(endian + "H", buf, pos + 6)
                pos += 8
            if length == 0xFFFFFFFF:
                if (group, element) == (0x7FE0, 0x0010):
                    pos = self.fragments(pos, end)
                else:  # a sequence; UN of undefined length holds implicit VR LE (PS3.5 6.2.2)
                    pos = self.sequence(pos, end, implicit=implicit or vr == b"UN")
            elif pos + length > end:
                raise Malformed(
                    f"element ({group:04X},{element:04X}) declares {length} bytes "
                    f"but only {end - pos} were received"
                )
            else:
                pos += length
        if in_item:
            raise Malformed("item of undefined length has no Item Delimitation Item")
        return pos

    def sequence(self, pos: int, end: int, *, implicit: bool) -> int:
        while pos < end:
            group, element = self._header(pos, end)
            (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 4)
            if (group, element) == (0xFFFE, 0xE0DD):
                return pos + 8
            if (group, element) != (0xFFFE, 0xE000):
                raise Malformed(f"sequence holds ({group:04X},{element:04X}), not an item")
            if length == 0xFFFFFFFF:
                pos = self.elements(pos + 8, end, implicit=implicit, in_item=True)
            elif pos + 8 + length > end:
                raise Malformed(f"sequence item declares {length} bytes, {end - pos - 8} remain")
            else:
                pos += 8 + length
        raise Malformed("sequence of undefined length has no Sequence Delimitation Item")

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated Pixel Data: items of defined length, then a delimiter (PS3.5 A.4)."""
        while pos < end:
            group, element = self._header(pos, end)
            (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 4)
            if (group, element) == (0xFFFE, 0xE0DD):
                return pos + 8
            if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
                raise Malformed("encapsulated Pixel Data holds something other than fragments")
            if pos + 8 + length > end:
                raise Malformed(
                    f"Pixel Data fragment declares {length} bytes, only {end - pos - 8} remain"
                )
            pos += 8 + length
        raise Malformed("encapsulated Pixel Data has no Sequence Delimitation Item (PS3.5 A.4)")
