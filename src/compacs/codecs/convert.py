"""A stored object in the transfer syntax a peer accepted: what retrieve and forwarding send.

Native syntaxes are reached by decoding; a compressed syntax by decoding and encoding
again, verified like every encode (lossless: bit-exact). A lossy syntax is produced only
when the caller asks for it (a routing rule with ``lossy = true``), and then the result
is a derived instance with a new SOP Instance UID (PS3.3 C.7.6.1.1.5, see ``lossy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from compacs.codecs.lossy import derive
from compacs.codecs.table import BY_SYNTAX
from compacs.codecs.transcode import NATIVE_SYNTAXES, decompress, encode_dataset, read_dataset
from compacs.dicom.byteorder import to_little_endian


class NotConvertible(ValueError):
    """compacs cannot produce the requested syntax from this object."""


@dataclass(frozen=True)
class Converted:
    dataset: Dataset
    size: int
    """Bytes of the Part 10 encoding (what goes on the wire, give or take the meta)."""
    derived_uid: str | None = None
    """The new SOP Instance UID when the conversion was lossy."""


def _part10(ds: Dataset) -> bytes:
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def convert(data: bytes, target: str, lossy_options: dict[str, Any] | None = None) -> Converted:
    """The Part 10 object ``data`` in transfer syntax ``target``.

    ``lossy_options`` (codec options, may be empty) permits a lossy ``target``; without
    it a lossy target raises NotConvertible.
    """
    ds = read_dataset(data)
    stored = str(ds.file_meta.TransferSyntaxUID)
    if target == stored:
        return Converted(ds, len(data))
    to_little_endian(ds)  # every other target is little endian; values kept
    if target in NATIVE_SYNTAXES:
        # Explicit VR LE; pynetdicom re-encodes it when only Implicit VR LE was accepted
        native = decompress(ds)
        return Converted(native, len(_part10(native)))
    codec = BY_SYNTAX.get(target)
    if codec is None:
        raise NotConvertible(f"compacs cannot encode {target}")
    if codec.lossless:
        encoded = encode_dataset(decompress(ds), codec)
        return Converted(dcmread(BytesIO(encoded.data)), len(encoded.data))
    if lossy_options is None:
        raise NotConvertible(f"{codec.name} is lossy and the route does not allow loss")
    native = _part10(decompress(ds)) if ds.file_meta.TransferSyntaxUID.is_compressed else data
    encoded, uid = derive(native, codec, lossy_options)
    return Converted(dcmread(BytesIO(encoded.data)), len(encoded.data), uid)
