"""Frames out of a stored data set, by the first decoder that can read them.

What is stored must come out again, whatever wrote it: retrieval to a peer that accepts
only native syntaxes (PS3.4 C.4.2.3.1), forwarding, and transcoding into another
syntax all decode here. Three decoders are tried in turn, and the first whose frames have
the shape the Image Pixel module describes (PS3.3 C.7.6.3) wins, once
:func:`compacs.codecs.geometry.check_pixel_data` has found that the Pixel Data can hold
those frames (no decoder runs on an object whose decoded size its data cannot explain):

1. compacs' codec table, for the syntaxes compacs writes (its streams were verified with
   that decoder; JPEG XL, which pydicom 3.0 cannot decode, is only there);
2. pydicom with its plugins (pylibjpeg, pyjpegls), the usual reader of received objects;
3. imagecodecs' own decoder for the stream (libjpeg-turbo also reads 12-bit JPEG
   Extended, which pylibjpeg refuses; OpenJPEG, CharLS, libjxl).

``source_frames`` (input of an encode) asks pydicom first, ``stored_frames`` (retrieval)
the codec table first. Frames come in their stored colour space (YCbCr stays YCbCr; the
J2K colour transforms are undone inside the codestream decoder, PS3.5 8.2.4), with the
bits above Bits Stored cleared or sign-extended (see :func:`compacs.codecs.pixels.clean`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import iter_pixels

from compacs.codecs.geometry import ImplausiblePixelData, check_pixel_data
from compacs.codecs.pixels import PixelInfo, clean
from compacs.codecs.table import BY_SYNTAX

FramesDecoder = Callable[[Dataset, PixelInfo], list[np.ndarray]]
StreamDecoder = Callable[[bytes, PixelInfo], np.ndarray]


class NotDecodable(ValueError):
    """No decoder read the pixel data of this object; each decoder's reason is listed."""


def _jpeg_process_1_to_14(data: bytes, info: PixelInfo) -> np.ndarray:
    """ISO 10918-1 (PS3.5 8.2.1): libjpeg-turbo reads 8- and 12-bit DCT and lossless
    streams; colour stays in the stream's space (YCbCr for YBR_FULL/_422)."""
    if info.samples_per_pixel == 3 and info.photometric.startswith("YBR"):
        return imagecodecs.jpeg8_decode(data, colorspace="YCBCR", outcolorspace="YCBCR")
    if info.samples_per_pixel == 3:
        return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    return imagecodecs.jpeg_decode(data)  # jpeg8, then ljpeg / jpegsof3 for process 14


def _jpeg_2000(data: bytes, info: PixelInfo) -> np.ndarray:
    return imagecodecs.jpeg2k_decode(data, numthreads=1)


def _jpeg_xl(data: bytes, info: PixelInfo) -> np.ndarray:
    return imagecodecs.jpegxl_decode(data, numthreads=1)


# imagecodecs' decoder for the stream of each encapsulated syntax the codec table has no
# row for (PS3.5 A.4); where it has one, its decoder is that same imagecodecs call (JPEG-LS,
# JPEG 2000, HTJ2K, JPEG XL, JPEG baseline), so trying it twice would add nothing.
IMAGECODECS: dict[str, StreamDecoder] = {
    uid: decoder
    for uid, decoder in {
        **dict.fromkeys(
            ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"),
            _jpeg_process_1_to_14,
        ),
        "1.2.840.10008.1.2.4.70": _jpeg_process_1_to_14,
        "1.2.840.10008.1.2.4.112": _jpeg_xl,
    }.items()
    if uid not in BY_SYNTAX
}


def _frame_shape(info: PixelInfo) -> tuple[int, ...]:
    if info.samples_per_pixel == 1:
        return (info.rows, info.columns)
    return (info.rows, info.columns, info.samples_per_pixel)


def _checked(frame: np.ndarray, info: PixelInfo, n: int) -> np.ndarray:
    """``frame`` in the Image Pixel module's shape and dtype, cleaned; ValueError when
    the decoder produced something else (a wrong reading must not pass for pixels)."""
    shape = _frame_shape(info)
    if frame.shape != shape:
        if frame.size != int(np.prod(shape)):
            raise ValueError(f"frame {n + 1} decodes to {frame.shape}, expected {shape}")
        frame = frame.reshape(shape)  # e.g. (rows, columns, 1) for one sample
    frame = np.ascontiguousarray(frame)
    if frame.dtype != info.dtype:
        frame = frame.astype(info.dtype)
    return clean(frame, info)


def _stream_frames(decode: StreamDecoder) -> FramesDecoder:
    """A frames decoder that decodes each encapsulated frame (PS3.5 A.4) with ``decode``."""

    def frames(ds: Dataset, info: PixelInfo) -> list[np.ndarray]:
        if info.bits_allocated not in (8, 16, 32, 64):
            raise ValueError(f"no stream decoder for Bits Allocated {info.bits_allocated}")
        fragments = generate_frames(ds.PixelData, number_of_frames=info.frames)
        return [_checked(decode(f, info), info, n) for n, f in enumerate(fragments)]

    return frames


def _pydicom(ds: Dataset, info: PixelInfo) -> list[np.ndarray]:
    """pydicom 3 with its plugins; ``raw``: no YCbCr to RGB conversion."""
    return [_checked(f, info, n) for n, f in enumerate(iter_pixels(ds, raw=True))]


def _decoders(syntax: str, pydicom_first: bool) -> list[tuple[str, FramesDecoder]]:
    chain: list[tuple[str, FramesDecoder]] = [("pydicom", _pydicom)]
    table = BY_SYNTAX.get(syntax)
    if table is not None:
        own = (f"compacs {table.name} ({table.backend})", _stream_frames(table.decode))
        chain.insert(len(chain) if pydicom_first else 0, own)
    if syntax in IMAGECODECS:
        chain.append(("imagecodecs", _stream_frames(IMAGECODECS[syntax])))
    return chain


def _first_that_decodes(
    ds: Dataset, info: PixelInfo, decoders: Sequence[tuple[str, FramesDecoder]]
) -> list[np.ndarray]:
    try:
        check_pixel_data(ds, info)
    except ImplausiblePixelData as exc:
        raise NotDecodable(str(exc)) from None
    reasons = []
    for name, decode in decoders:
        try:
            frames = decode(ds, info)
        except Exception as exc:  # any decoder may fail on any stream: try the next
            reasons.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            continue
        if len(frames) == info.frames:
            return frames
        reasons.append(f"{name}: {len(frames)} frame(s), Number of Frames is {info.frames}")
    raise NotDecodable("; ".join(reasons))


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def source_frames(ds: Dataset, info: PixelInfo) -> list[np.ndarray]:
    """Every frame of ``ds`` as the input of an encode: pydicom first, then the others."""
    return _first_that_decodes(ds, info, _decoders(_syntax(ds), pydicom_first=True))


def stored_frames(ds: Dataset, info: PixelInfo) -> list[np.ndarray]:
    """Every frame of a stored ``ds``: compacs' codec table first (the decoder that
    verified what compacs wrote), then pydicom, then imagecodecs."""
    return _first_that_decodes(ds, info, _decoders(_syntax(ds), pydicom_first=False))
