"""A stored object in the transfer syntax a peer accepted: what retrieve and forwarding send.

Native syntaxes are reached by decoding; a compressed syntax by decoding and encoding
again, verified like every encode (lossless: bit-exact). A lossy syntax is produced only
when the caller asks for it (a routing rule with ``lossy = true``), and then the result
is a derived instance with a new SOP Instance UID (PS3.3 C.7.6.1.1.5, see ``lossy``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from compacs.codecs.lossy import derive
from compacs.codecs.table import BY_SYNTAX, restorable
from compacs.codecs.transcode import (
    decompress,
    encode_dataset,
    read_dataset,
    recompress,
    restore,
)
from compacs.dicom import part10
from compacs.dicom.byteorder import to_little_endian
from compacs.dicom.part10 import deflate
from compacs.dicom.syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_SYNTAXES


class NotConvertible(ValueError):
    """compacs cannot produce the requested syntax from this object."""


@dataclass(frozen=True)
class Converted:
    dataset: Dataset
    size: int
    """Bytes of the Part 10 encoding (what goes on the wire, give or take the meta)."""
    derived_uid: str | None = None
    """The new SOP Instance UID when the conversion was lossy."""


def convert(data: bytes, target: str, lossy_options: dict[str, Any] | None = None) -> Converted:
    """The Part 10 object ``data`` in transfer syntax ``target``.

    ``lossy_options`` (codec options, may be empty) permits a lossy ``target``; without
    it a lossy target raises NotConvertible.
    """
    ds = read_dataset(data)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if target == stored:
        return Converted(ds, len(data))
    if target in restorable(stored):  # the received bitstreams, byte for byte
        restored = restore(ds, BY_SYNTAX[stored])
        return Converted(restored, len(part10.write(restored)))
    to_little_endian(ds)  # every other target is little endian; values kept
    if target in NATIVE_SYNTAXES:
        # Explicit VR LE; pynetdicom re-encodes it when only Implicit VR LE was accepted
        native = decompress(ds)
        return Converted(native, len(part10.write(native)))
    codec = BY_SYNTAX.get(target)
    if codec is None:
        raise NotConvertible(f"compacs cannot encode {target}")
    if not codec.encodes_pixels:
        if stored != codec.recompresses:
            raise NotConvertible(f"{codec.name} recompresses {codec.recompresses} only")
        encoded = recompress(data, codec)
        return Converted(part10.read(encoded.data), len(encoded.data))
    if codec.lossless:
        encoded = encode_dataset(decompress(ds), codec)
        return Converted(part10.read(encoded.data), len(encoded.data))
    if lossy_options is None:
        raise NotConvertible(f"{codec.name} is lossy and the route does not allow loss")
    pixels = part10.write(decompress(ds)) if ds.file_meta.TransferSyntaxUID.is_compressed else data
    encoded, uid = derive(pixels, codec, lossy_options)
    return Converted(part10.read(encoded.data), len(encoded.data), uid)


def data_set_bytes(ds: Dataset, syntax: str) -> bytes:
    """``ds`` without its File Meta, encoded in ``syntax``: what a C-STORE-RQ carries
    (PS3.7 9.3.1.1; the data set in the presentation context's syntax, PS3.5 A.1-A.5).
    Deflated Explicit VR Little Endian is deflated after encoding (PS3.5 A.5)."""
    uid = UID(syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR = uid.is_implicit_VR
    fp.is_little_endian = uid.is_little_endian
    write_dataset(fp, ds)
    return deflate(fp.getvalue()) if uid.is_deflated else fp.getvalue()


def data_set_for(data: bytes, target: str) -> bytes:
    """The data set of the stored Part 10 object ``data`` encoded in ``target`` (lossless
    only, see :func:`convert`): the stored bytes themselves when ``target`` is the stored
    syntax, never parsed nor re-encoded; decoded to Explicit VR Little Endian, the stored
    bytes with only the Pixel Data element replaced when nothing else changes
    (:func:`_spliced`), which saves pydicom's encoding of the whole data set."""
    stored, offset = part10.split(data)
    if stored == target:
        return data[offset:]
    if target != EXPLICIT_VR_LITTLE_ENDIAN or not UID(stored).is_encapsulated:
        return data_set_bytes(convert(data, target).dataset, target)
    ds = read_dataset(data)
    before = _spliced_attributes(ds)
    pixels = ds.get_item(0x7FE00010)
    at = None if pixels is None else getattr(pixels, "value_tell", None)
    native = decompress(ds)
    spliced = _spliced(data, offset, at, native, before)
    return data_set_bytes(native, target) if spliced is None else spliced


_CHANGEABLE = (0x00280004, 0x00280006, 0x00282110)
"""What :func:`decompress` may change besides Pixel Data: Photometric Interpretation,
Planar Configuration, Lossy Image Compression."""

_ENCAPSULATED_HEADER = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)


def _spliced_attributes(ds: Dataset) -> tuple[Any, ...]:
    return tuple(ds[tag].value if tag in ds else None for tag in _CHANGEABLE)


def _spliced(
    data: bytes, offset: int, value_at: int | None, native: Dataset, before: tuple[Any, ...]
) -> bytes | None:
    """The stored data set (Explicit VR Little Endian, PS3.5 A.4) with its encapsulated
    Pixel Data, the last element, replaced by ``native``'s (PS3.5 8.1.1), or None when more
    than that changed or the layout is another (an element after Pixel Data, a group
    length, Pixel Data not where the reader found it)."""
    if value_at is None or _spliced_attributes(native) != before:
        return None
    if 0x7FE00000 in native or max(native.keys(), default=0) != 0x7FE00010:
        return None
    header_at = value_at - len(_ENCAPSULATED_HEADER)
    if header_at < offset or data[header_at:value_at] != _ENCAPSULATED_HEADER:
        return None
    element = native["PixelData"]
    value = element.value
    head = struct.pack("<HH2s2xL", 0x7FE0, 0x0010, element.VR.encode("ascii"), len(value))
    return b"".join((data[offset:header_at], head, value))
