"""Whether Pixel Data can hold the frames the Image Pixel module declares, checked before
any decoder allocates them.

A decoder allocates its output from the geometry it is told or reads, not from the size
of its input: a 476-byte RLE object declaring one 8192 x 8192 x 3 x 16-bit frame made the
RLE decoder allocate 384 MiB before it failed. So, before any decoder runs:

- the decoded size of the object (Rows x Columns x Samples x Bits Allocated x Frames,
  PS3.3 C.7.6.3) is at most :data:`MAX_DECODED_BYTES`;
- native Pixel Data holds at least that many bytes (PS3.5 8.1.1);
- an RLE frame has one segment per sample byte (PS3.5 G.2), and each segment is long
  enough to expand to Rows x Columns bytes: a PackBits replicate run turns 2 bytes into
  at most 128 (PS3.5 G.3.1), so no segment expands more than 64-fold;
- the frame header of every JPEG, JPEG-LS, JPEG 2000 / HTJ2K and JPEG XL stream declares
  the Rows, Columns and components of the data set (PS3.5 8.2: the Image Pixel attributes
  are consistent with the compressed stream), so no decoder allocates more than that.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from compacs.codecs.pixels import PixelInfo
from compacs.codecs.streams import (
    J2K_SYNTAXES,
    JPEG_LS_SYNTAXES,
    JPEG_SYNTAXES,
    JPEG_XL_SYNTAXES,
    Geometry,
    j2k_geometry,
    jpeg_geometry,
    jxl_geometry,
)

MAX_DECODED_BYTES = 2**31
"""Largest decoded pixel data of one object, in bytes: the default ``[ingest]
max_object_size``. Decoding holds every frame of an object at once (to encode or send it),
so this bounds the memory one decode can take."""

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_RLE_MAX_EXPANSION = 64  # PS3.5 G.3.1: a 2-byte replicate run gives at most 128 bytes


class ImplausiblePixelData(ValueError):
    """Pixel Data cannot hold, or must not be decoded to, what the data set declares."""


def check_pixel_data(ds: Dataset, info: PixelInfo, frames: Iterable[int] | None = None) -> None:
    """Raise ImplausiblePixelData when decoding ``ds`` would allocate more than its Pixel
    Data can hold or more than :data:`MAX_DECODED_BYTES`. ``frames``: the 0-based frames
    about to be decoded (all of them when None)."""
    wanted = set(range(info.frames)) if frames is None else set(frames)
    frame_bits = info.rows * info.columns * info.samples_per_pixel * info.bits_allocated
    decoded = (frame_bits * len(wanted) + 7) // 8
    if decoded > MAX_DECODED_BYTES:
        raise ImplausiblePixelData(
            f"{len(wanted)} frame(s) of {info.rows} x {info.columns} x "
            f"{info.samples_per_pixel} x {info.bits_allocated} bits decode to {decoded} bytes, "
            f"over the {MAX_DECODED_BYTES} one decode may take"
        )
    syntax = str(ds.file_meta.TransferSyntaxUID)
    pixel_data = ds.PixelData
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        needed = (frame_bits * info.frames + 7) // 8
        if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            needed = needed * 2 // 3  # chroma shared by two pixels (PS3.3 C.7.6.3.1.2)
        if len(pixel_data) < needed:
            raise ImplausiblePixelData(
                f"native Pixel Data holds {len(pixel_data)} bytes; Rows, Columns, Samples per "
                f"Pixel, Bits Allocated and Number of Frames need {needed} (PS3.5 8.1.1)"
            )
        return
    check = _STREAM_CHECKS.get(syntax)
    if check is None:
        return
    for n, frame in enumerate(generate_frames(pixel_data, number_of_frames=info.frames)):
        if n in wanted:
            problem = check(frame, info)
            if problem:
                raise ImplausiblePixelData(f"frame {n + 1}: {problem}")


def _rle_problem(frame: bytes, info: PixelInfo) -> str | None:
    """PS3.5 G.2-G.5: a 64-byte header (number of segments, 15 offsets), then the segments,
    one per byte of each sample, most significant first, each Rows x Columns bytes."""
    if len(frame) < 64:
        return f"RLE frame of {len(frame)} bytes has no 64-byte header (PS3.5 G.5)"
    count, *offsets = struct.unpack_from("<16I", frame)
    expected = info.samples_per_pixel * max(info.bits_allocated // 8, 1)
    if count != expected:
        return (
            f"RLE header has {count} segments; Samples per Pixel {info.samples_per_pixel} and "
            f"Bits Allocated {info.bits_allocated} need {expected} (PS3.5 G.2)"
        )
    ends = [*offsets[1:count], len(frame)]
    for n, (start, end) in enumerate(zip(offsets[:count], ends, strict=True), 1):
        if not 64 <= start <= end <= len(frame):
            return f"RLE segment {n} offset {start} lies outside the frame (PS3.5 G.5)"
        if info.rows * info.columns > _RLE_MAX_EXPANSION * (end - start):
            return (
                f"RLE segment {n} of {end - start} bytes cannot expand to Rows x Columns = "
                f"{info.rows * info.columns} bytes (at most {_RLE_MAX_EXPANSION}-fold, "
                "PS3.5 G.3.1)"
            )
    return None


def _header_check(
    read: Callable[[bytes], Geometry | None],
) -> Callable[[bytes, PixelInfo], str | None]:
    def problem(stream: bytes, info: PixelInfo) -> str | None:
        geometry = read(stream)
        if geometry is None:
            return None  # not read here: the decoder will say what is wrong
        rows, columns, components = geometry
        if columns != info.columns or rows not in (0, info.rows):  # 0: rows in a DNL
            return (
                f"the stream declares {rows} x {columns} pixels, the data set Rows {info.rows} "
                f"and Columns {info.columns} (PS3.5 8.2)"
            )
        if components is not None and components != info.samples_per_pixel:
            return (
                f"the stream has {components} components, the data set Samples per Pixel "
                f"{info.samples_per_pixel} (PS3.5 8.2)"
            )
        return None

    return problem


_STREAM_CHECKS: dict[str, Callable[[bytes, PixelInfo], str | None]] = {
    RLE_LOSSLESS: _rle_problem,
    **dict.fromkeys(JPEG_SYNTAXES | JPEG_LS_SYNTAXES, _header_check(jpeg_geometry)),
    **dict.fromkeys(J2K_SYNTAXES, _header_check(j2k_geometry)),
    **dict.fromkeys(JPEG_XL_SYNTAXES, _header_check(jxl_geometry)),
}
