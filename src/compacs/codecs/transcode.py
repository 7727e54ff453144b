"""Data set -> data set in another transfer syntax, verified before anyone relies on it.

Lossless means bit-exact: every encoded frame is decoded again with the codec's decoder
and compared with the source frame (after the bits above Bits Stored were cleared);
any difference raises :class:`VerificationFailed` and the caller keeps the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite

from compacs.codecs.pixels import PixelInfo, clean, source_frames
from compacs.codecs.table import BY_SYNTAX, Codec
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


def _verify(
    codec: Codec,
    encoded: bytes,
    frame: np.ndarray,
    info: PixelInfo,
    n: int,
    options: dict[str, Any],
) -> None:
    """Lossless: bit-exact. JPEG-LS near-lossless: no sample off by more than NEAR."""
    decoded = codec.decode(encoded, info)
    if decoded.shape != frame.shape:
        raise VerificationFailed(f"{codec.name}: frame {n + 1} decodes to {decoded.shape}")
    if codec.lossless:
        if not np.array_equal(decoded, frame):
            raise VerificationFailed(
                f"{codec.name}: frame {n + 1} does not decode to the source pixels"
            )
    elif "near" in options:
        error = np.abs(decoded.astype(np.int64) - frame.astype(np.int64)).max()
        if error > int(options["near"]):
            raise VerificationFailed(f"{codec.name}: error {error} exceeds NEAR={options['near']}")


def encode_dataset(
    ds: Dataset,
    codec: Codec,
    options: dict[str, Any] | None = None,
    before_write: Callable[[Dataset, float], None] | None = None,
) -> Transcoded:
    """Encode ``ds``'s pixel data with ``codec``; ``ds`` is changed in place.

    ``before_write(ds, ratio)`` may change the data set once the pixels are encoded (the
    lossy path adds the derivation attributes there). Raises NotCompressible (nothing to
    encode), CodecUnavailable (not with this codec), VerificationFailed, or whatever the
    codec raised.
    """
    options = options or {}
    info = PixelInfo.of(ds)
    codec.check(info)
    fragments: list[bytes] = []
    for n, frame in enumerate(source_frames(ds, info)):
        encoded = codec.encode(frame, info, options)
        _verify(codec, encoded, frame, info, n, options)
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
    if before_write is not None:
        before_write(ds, info.frame_bytes * info.frames / sum(len(f) for f in fragments))
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return Transcoded(
        out.getvalue(), codec.transfer_syntax, codec, len(fragments), info.frame_bytes * info.frames
    )


def transcode(data: bytes, codec: Codec, options: dict[str, Any] | None = None) -> Transcoded:
    """The Part 10 file ``data`` with its pixel data encoded by ``codec`` (verified)."""
    return encode_dataset(read_full(data), codec, options)


NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def decode_frames(ds: Dataset, info: PixelInfo) -> list[np.ndarray]:
    """Every frame, decoded by compacs' codec table when it produced the syntax (JPEG XL
    included, which pydicom 3 cannot decode), otherwise by pydicom and its plugins."""
    codec = BY_SYNTAX.get(str(ds.file_meta.TransferSyntaxUID))
    if codec is None:
        return list(source_frames(ds, info))
    fragments = generate_frames(ds.PixelData, number_of_frames=info.frames)
    return [clean(codec.decode(frame, info), info) for frame in fragments]


def decompress(ds: Dataset) -> Dataset:
    """``ds`` with native pixel data in Explicit VR Little Endian, changed in place; the
    lossy attributes, if any, stay as they are (PS3.3 C.7.6.1.1.5)."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return ds
    info = PixelInfo.of(ds)
    frames = decode_frames(ds, info)
    pixels = b"".join(
        np.ascontiguousarray(f, dtype=info.dtype.newbyteorder("<")).tobytes() for f in frames
    )
    ds.PixelData = pixels + (b"\0" if len(pixels) % 2 else b"")
    elem = ds["PixelData"]
    elem.VR = "OW" if info.bits_allocated > 8 else "OB"
    elem.is_undefined_length = False
    ds.PhotometricInterpretation = info.photometric
    if info.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = NATIVE_SYNTAXES[0]
    return ds
