"""The pixel facts every codec needs (PS3.3 C.7.6.3), and sample-level helpers.

Decoded frames (``compacs.codecs.decode``) have the bits above Bits Stored cleared
(unsigned) or sign-extended (signed): those bits are not pixel data (PS3.5 8.1.1), and
peers have corrupted images by encoding them (dcm4che#813).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


class NotCompressible(ValueError):
    """The object holds nothing these codecs can carry; it is kept as received."""


# Bits Allocated the native and encapsulated syntaxes carry in Pixel Data (PS3.5 8.1.1,
# PS3.3 C.7.6.3.1.1; 32 and 64 e.g. in RLE, PS3.5 G.2); all of them decode.
DECODABLE_BITS_ALLOCATED = (1, 8, 16, 32, 64)
# What the encoders (codec table) carry; anything else is kept as received.
COMPRESSIBLE_BITS_ALLOCATED = (8, 16)

# What the decoders hand back for these stored interpretations: the JPEG 2000 component
# transforms are undone inside the codestream decoder (PS3.5 8.2.4), and native 4:2:2
# chroma is upsampled (PS3.3 C.7.6.3.1.2).
_DECODED_AS = {"YBR_RCT": "RGB", "YBR_ICT": "RGB", "YBR_FULL_422": "YBR_FULL"}


@dataclass(frozen=True)
class PixelInfo:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    """The interpretation of the decoded frames (see _DECODED_AS)."""
    frames: int

    @classmethod
    def of(cls, ds: Dataset) -> PixelInfo:
        """The facts of ``ds``'s Pixel Data; NotCompressible when there is none or the
        Image Pixel module does not describe pixels any decoder could produce."""
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise NotCompressible("float pixel data")
            raise NotCompressible("no pixel data")
        try:
            info = cls(
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                samples_per_pixel=int(ds.SamplesPerPixel),
                bits_allocated=int(ds.BitsAllocated),
                bits_stored=int(ds.BitsStored),
                signed=int(ds.PixelRepresentation) == 1,
                photometric=_DECODED_AS.get(pi := str(ds.PhotometricInterpretation).strip(), pi),
                frames=int(ds.get("NumberOfFrames") or 1),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise NotCompressible(f"Image Pixel module incomplete: {exc}") from None
        if info.bits_allocated not in DECODABLE_BITS_ALLOCATED:
            raise NotCompressible(f"Bits Allocated {info.bits_allocated}")
        if not 1 <= info.bits_stored <= info.bits_allocated:
            raise NotCompressible(f"Bits Stored {info.bits_stored}")
        if info.samples_per_pixel not in (1, 3):
            raise NotCompressible(f"Samples per Pixel {info.samples_per_pixel}")
        return info

    def check_compressible(self) -> None:
        """Raise NotCompressible when the encoders cannot carry these samples: decoding
        handles every Bits Allocated, encoding only 8 and 16."""
        if self.bits_allocated == 1:
            raise NotCompressible("Bits Allocated 1 (bit-packed, e.g. SEG)")
        if self.bits_allocated not in COMPRESSIBLE_BITS_ALLOCATED:
            raise NotCompressible(f"Bits Allocated {self.bits_allocated}")

    @property
    def dtype(self) -> np.dtype:
        """One sample of a decoded frame (Bits Allocated 1: one byte a sample, 0 or 1)."""
        size = max(self.bits_allocated // 8, 1)
        return np.dtype(f"{'i' if self.signed else 'u'}{size}")

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8


def clean(frame: np.ndarray, info: PixelInfo) -> np.ndarray:
    """``frame`` with the bits above Bits Stored cleared (unsigned) or sign-extended."""
    if info.bits_stored == info.bits_allocated:
        return frame
    if not info.signed:
        return np.asarray(frame & np.array((1 << info.bits_stored) - 1, dtype=frame.dtype))
    shift = info.bits_allocated - info.bits_stored
    return (frame << shift) >> shift  # arithmetic shift keeps the sign of Bits Stored


def as_unsigned(frame: np.ndarray, info: PixelInfo) -> np.ndarray:
    """Signed samples as the unsigned two's complement of Bits Stored (JPEG-LS, PS3.5 8.2.3)."""
    if not info.signed:
        return frame
    unsigned = frame.view(np.dtype(f"u{info.bits_allocated // 8}"))
    return np.asarray(unsigned & np.array((1 << info.bits_stored) - 1, dtype=unsigned.dtype))


def from_unsigned(frame: np.ndarray, info: PixelInfo) -> np.ndarray:
    """Inverse of :func:`as_unsigned`."""
    if not info.signed:
        return frame
    return clean(frame.astype(frame.dtype).view(info.dtype), info)
