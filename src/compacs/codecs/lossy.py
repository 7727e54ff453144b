"""Lossy results are derived images (PS3.3 C.7.6.1.1.5, C.7.6.1.1.2 and C.7.6.1.1.3).

What DCMTK's dcmcjpls/dcmcjpeg do, and what pydicom's ``compress()`` leaves out:
Lossy Image Compression (0028,2110) becomes "01" and is never reset; the ratio (0028,2112)
and method (0028,2114) are appended to any earlier ones; the result is a new SOP Instance
with Image Type DERIVED, a Derivation Description, a Derivation Code Sequence (DCM 113040
"Lossy Compression") and a Source Image Sequence that points to the original (purpose
DCM 121320 "Uncompressed predecessor").
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from compacs.codecs.table import Codec
from compacs.codecs.transcode import Transcoded, encode_dataset, read_full
from compacs.dicom.syntaxes import BY_UID

UID_PREFIX = None  # pydicom's generate_uid(None): a UUID-derived 2.25 UID (PS3.5 B.2)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def mark_derived(ds: Dataset, codec: Codec, ratio: float, description: str) -> str:
    """Make ``ds`` the lossy derivative of itself; return the new SOP Instance UID."""
    original_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    method = BY_UID[codec.transfer_syntax].lossy_method or "UNKNOWN"

    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [
        *_as_list(ds.get("LossyImageCompressionRatio")),
        f"{ratio:.2f}"[:16],
    ]
    ds.LossyImageCompressionMethod = [*_as_list(ds.get("LossyImageCompressionMethod")), method]

    image_type = _as_list(ds.get("ImageType")) or ["DERIVED", "PRIMARY"]
    ds.ImageType = ["DERIVED", *image_type[1:]]
    earlier = str(ds.get("DerivationDescription") or "")
    ds.DerivationDescription = (f"{earlier}; {description}" if earlier else description)[:1024]
    ds.DerivationCodeSequence = [
        *ds.get("DerivationCodeSequence", []),
        _code("113040", "Lossy Compression"),
    ]

    source = Dataset()
    source.ReferencedSOPClassUID = sop_class
    source.ReferencedSOPInstanceUID = original_uid
    source.PurposeOfReferenceCodeSequence = [_code("121320", "Uncompressed predecessor")]
    ds.SourceImageSequence = [*ds.get("SourceImageSequence", []), source]

    new_uid = generate_uid(UID_PREFIX)
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    return new_uid


def derive(data: bytes, codec: Codec, options: dict[str, Any]) -> tuple[Transcoded, str]:
    """The lossy derivative of the Part 10 file ``data`` and its new SOP Instance UID."""
    uid: list[str] = []
    details = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))

    def before_write(ds: Dataset, ratio: float) -> None:
        description = f"Lossy compression by compacs: {codec.name}"
        description += f" ({details})" if details else ""
        description += f", ratio {ratio:.2f}:1"
        uid.append(mark_derived(ds, codec, ratio, description))

    result = encode_dataset(read_full(data), codec, options, before_write)
    return result, uid[0]
