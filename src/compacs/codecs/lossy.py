"""Lossy results are derived images (PS3.3 C.7.6.1.1.5, C.7.6.1.1.2 and C.7.6.1.1.3).

What DCMTK's dcmcjpls/dcmcjpeg do, and what pydicom's ``compress()`` leaves out:
Lossy Image Compression (0028,2110) becomes "01" and is never reset; the ratio (0028,2112)
and method (0028,2114) are appended to any earlier ones; the result is a new SOP Instance
with Image Type DERIVED, a Derivation Description, a Derivation Code Sequence (DCM 113040
"Lossy Compression") and a Source Image Sequence that points to the original (purpose
DCM 121320 "Uncompressed predecessor").

Objects of the enhanced multi-frame IODs are refused (:class:`DerivationRefused`): their
derivative would also need per-frame Frame Type and the Derivation Image functional group
(PS3.3 C.7.6.16, C.7.6.16.2.6), which compacs does not write.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, generate_uid

from compacs.codecs.table import Codec
from compacs.codecs.transcode import Transcoded, encode_dataset, read_full
from compacs.dicom.syntaxes import BY_UID

UID_PREFIX = None  # pydicom's generate_uid(None): a UUID-derived 2.25 UID (PS3.5 B.2)

# Storage SOP classes whose IOD has the Multi-frame Functional Groups module (PS3.3 A.36
# Enhanced MR, A.38 Enhanced CT, A.21.3 Enhanced PET, A.70 Legacy Converted Enhanced, A.59
# Enhanced US Volume, A.47/A.48 Enhanced XA/XRF, A.53/A.54 X-Ray 3D, A.75 Parametric Map,
# A.77 Breast Tomosynthesis, A.99 Breast Projection X-Ray, A.51 SEG, A.68 IVOCT, A.52 OPT).
FUNCTIONAL_GROUP_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2.2",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.4.3",
        "1.2.840.10008.5.1.4.1.1.4.4",
        "1.2.840.10008.5.1.4.1.1.128.1",
        "1.2.840.10008.5.1.4.1.1.130",
        "1.2.840.10008.5.1.4.1.1.6.2",
        "1.2.840.10008.5.1.4.1.1.6.3",
        "1.2.840.10008.5.1.4.1.1.12.1.1",
        "1.2.840.10008.5.1.4.1.1.12.2.1",
        "1.2.840.10008.5.1.4.1.1.13.1.1",
        "1.2.840.10008.5.1.4.1.1.13.1.2",
        "1.2.840.10008.5.1.4.1.1.13.1.3",
        "1.2.840.10008.5.1.4.1.1.13.1.4",
        "1.2.840.10008.5.1.4.1.1.13.1.5",
        "1.2.840.10008.5.1.4.1.1.14.1",
        "1.2.840.10008.5.1.4.1.1.14.2",
        "1.2.840.10008.5.1.4.1.1.30",
        "1.2.840.10008.5.1.4.1.1.66.4",
        "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    }
)


class DerivationRefused(ValueError):
    """compacs does not make lossy derivatives of this kind of object; it is kept."""


def refuse_unsupported(ds: Dataset) -> None:
    """Raise DerivationRefused for an object of an enhanced multi-frame IOD."""
    sop_class = str(ds.get("SOPClassUID", ""))
    has_groups = "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds
    if sop_class in FUNCTIONAL_GROUP_SOP_CLASSES or has_groups:
        name = UID(sop_class).name.removesuffix(" Storage") if sop_class else "this object"
        raise DerivationRefused(
            f"lossy derivation of {name} is not supported: its derivative would need "
            "per-frame Frame Type and the Derivation Image functional group "
            "(PS3.3 C.7.6.16), which compacs does not write"
        )


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

    ds = read_full(data)
    refuse_unsupported(ds)
    result = encode_dataset(ds, codec, options, before_write)
    return result, uid[0]
