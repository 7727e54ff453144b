"""Data set -> data set in another transfer syntax, verified before anyone relies on it.

Lossless means bit-exact: every encoded frame is decoded again with the codec's decoder
and compared with the source frame (after the bits above Bits Stored were cleared);
any difference raises :class:`VerificationFailed` and the caller keeps the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite

from compacs.codecs.pixels import PixelInfo, source_frames
from compacs.codecs.table import Codec
from compacs.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class VerificationFailed(RuntimeError):
    """A lossless encode did not decode to the source pixels."""


@dataclass(frozen=True)
class Transcoded:
    data: bytes
    """The new Part 10 file."""
    transfer_syntax: str
    codec: Codec
    frames: int
    pixel_bytes: int
    """Size of the native pixel data the frames decode to."""


def read_full(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def encode_dataset(ds: Dataset, codec: Codec, options: dict[str, Any] | None = None) -> Transcoded:
    """Encode ``ds``'s pixel data with ``codec``; ``ds`` is changed in place.

    Raises NotCompressible (nothing to encode), CodecUnavailable (not with this codec),
    VerificationFailed, or whatever the codec raised.
    """
    options = options or {}
    info = PixelInfo.of(ds)
    codec.check(info)
    fragments: list[bytes] = []
    for n, frame in enumerate(source_frames(ds, info)):
        encoded = codec.encode(frame, info, options)
        if codec.lossless:
            decoded = codec.decode(encoded, info)
            if decoded.shape != frame.shape or not np.array_equal(decoded, frame):
                raise VerificationFailed(
                    f"{codec.name}: frame {n + 1} does not decode to the source pixels"
                )
        fragments.append(encoded)
    if len(fragments) != info.frames:
        raise VerificationFailed(f"{len(fragments)} frames encoded, {info.frames} expected")

    ds.PixelData = encapsulate(fragments, has_bot=len(fragments) > 1)
    elem = ds["PixelData"]
    elem.VR = "OB"
    elem.is_undefined_length = True
    ds.PhotometricInterpretation = codec.output_photometric(info, fragments[0])
    if info.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0  # PS3.5 8.2: colour-by-pixel in compressed streams
    ds.file_meta.TransferSyntaxUID = codec.transfer_syntax
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return Transcoded(
        out.getvalue(), codec.transfer_syntax, codec, len(fragments), info.frame_bytes * info.frames
    )


def transcode(data: bytes, codec: Codec, options: dict[str, Any] | None = None) -> Transcoded:
    """The Part 10 file ``data`` with its pixel data encoded by ``codec`` (verified)."""
    return encode_dataset(read_full(data), codec, options)
