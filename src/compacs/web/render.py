"""Stored pixels -> an 8-bit image for a screen: frame decoding, modality and VOI LUT
(window centre/width and VOI LUT Function, PS3.3 C.11.2), MONOCHROME1 inversion, colour
(RGB, YBR, palette), regions and scaling, PNG and JPEG encoding. Plain functions on
arrays, testable without a node; the web preview and DICOMweb's rendered resources
(PS3.18 10.4.1.1.3) and WADO-URI (PS3.18 9) share them.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, replace
from itertools import islice

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder, iter_pixels

from compacs.codecs.geometry import ImplausiblePixelData, check_pixel_data
from compacs.codecs.pixels import PixelInfo, clean
from compacs.codecs.table import BY_SYNTAX, Codec
from compacs.codecs.transcode import restore
from compacs.dicom import part10


class RenderError(ValueError):
    """The object cannot be shown (no pixel data, frame out of range, ...)."""


VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
"""VOI LUT Function (0028,1056) Defined Terms (PS3.3 C.11.2.1.3)."""


@dataclass(frozen=True)
class Window:
    """A VOI window: centre, width and the function mapping it (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


def _pydicom_decodes(uid: str) -> bool:
    try:
        return get_decoder(uid).is_available
    except (NotImplementedError, ValueError):
        return False


def decode_frame(ds: Dataset, info: PixelInfo, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) in its stored colour space: by pydicom and its plugins
    (``raw``: no colour conversion), or by compacs' codec table for what pydicom cannot
    decode (JPEG XL). The table's JPEG decoder converts YCbCr to RGB, which would make a
    YBR image's colours wrong here."""
    if not 0 <= index < info.frames:
        raise RenderError(f"frame {index + 1} out of range: the object has {info.frames}")
    try:
        check_pixel_data(ds, info, frames=[index])
    except ImplausiblePixelData as exc:
        raise RenderError(f"no image to show: {exc}") from None
    syntax = str(ds.file_meta.TransferSyntaxUID)
    codec = BY_SYNTAX.get(syntax)
    if codec is not None and codec.restore is not None:  # shown as its received JPEG is
        ds, info, index = _restored_frame(ds, info, index, codec), replace(info, frames=1), 0
        syntax = codec.recompresses
        codec = BY_SYNTAX.get(syntax)
    if codec is not None and not _pydicom_decodes(syntax):
        fragments = generate_frames(ds.PixelData, number_of_frames=info.frames)
        encoded = next(islice(fragments, index, None))
        return clean(codec.decode(encoded, info), info)
    frame = next(iter_pixels(ds, raw=True, indices=[index]))
    return clean(np.ascontiguousarray(frame).astype(info.dtype, copy=False), info)


def _restored_frame(ds: Dataset, info: PixelInfo, index: int, codec: Codec) -> Dataset:
    """A one-frame copy of ``ds`` holding frame ``index``'s received bitstream, restored
    by ``codec`` (JPEG XL JPEG Recompression, PS3.5 8.2.15), in the syntax it came in:
    one frame restored, not all of a cine's."""
    fragments = generate_frames(ds.PixelData, number_of_frames=info.frames)
    # elements copied, not shared: restore() changes them in place (a Dataset iterates
    # over elements, its keys() over tags)
    tags = [tag for tag in ds.keys() if tag != 0x7FE00010]  # noqa: SIM118
    one = Dataset({tag: deepcopy(ds.get_item(tag)) for tag in tags})
    one.file_meta = deepcopy(ds.file_meta)
    if "NumberOfFrames" in ds:
        one.NumberOfFrames = 1
    one.PixelData = encapsulate([next(islice(fragments, index, None))])
    return restore(one, codec)


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        # a pydicom value: a number or string, or a MultiValue/list of them
        value = value[0] if len(value) else None  # type: ignore[index, arg-type]
    try:
        return float(value)  # type: ignore[arg-type]  # what float() refuses is None below
    except (TypeError, ValueError):
        return None


def modality_lut(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """Rescale Slope/Intercept applied (PS3.3 C.11.1), as float64."""
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    out = frame.astype(np.float64)
    if slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def dataset_window(ds: Dataset) -> Window | None:
    """The data set's first VOI window (PS3.3 C.11.2.1.2) with its VOI LUT Function
    (LINEAR when absent or not a Defined Term); None when there is no usable one."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS or (function == "LINEAR" and width < 1):
        function = "LINEAR" if width >= 1 else "LINEAR_EXACT"
    return Window(center, width, function)


def frame_window(values: np.ndarray) -> Window:
    """The window spanning the frame's own minimum..maximum (LINEAR)."""
    lo, hi = float(values.min()), float(values.max())
    return Window((lo + hi + 1) / 2, max(hi - lo + 1, 1.0))


def apply_window(values: np.ndarray, window: Window | None) -> np.ndarray:
    """``window`` applied to 0..255 (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT,
    C.11.2.1.3.1 SIGMOID), in float64 so that rounding never depends on the precision;
    without a window the frame's own minimum..maximum."""
    window = window or frame_window(values)
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if window.function == "LINEAR":  # C.11.2.1.2.1: centre and width less a half / one
        c, w = c - 0.5, w - 1.0
    out = np.empty(x.shape, np.float64)
    below, above = x <= c - w / 2, x > c + w / 2
    between = ~(below | above)
    out[below], out[above] = 0.0, 255.0
    if w > 0:
        out[between] = ((x[between] - c) / w + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_8bit(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    if frame.dtype == np.uint8 and bits_stored == 8:
        return frame
    shift = max(bits_stored - 8, 0)
    clipped: np.ndarray = np.clip(frame.astype(np.int64) >> shift, 0, 255)  # numpy: Any
    return clipped.astype(np.uint8)


def display(
    frame: np.ndarray, ds: Dataset, info: PixelInfo, window: Window | None = None
) -> np.ndarray:
    """A decoded frame as 8-bit grey (rows, columns) or RGB (rows, columns, 3)."""
    photometric = info.photometric
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        if rgb.dtype != np.uint8:  # 16-bit LUT entries
            rgb = (rgb.astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if info.samples_per_pixel == 3:
        rgb = _to_8bit(frame, info.bits_stored)
        if photometric.startswith("YBR_FULL"):
            rgb = convert_color_space(rgb, "YBR_FULL", "RGB")
        return np.ascontiguousarray(rgb)
    grey = apply_window(modality_lut(frame, ds), window or dataset_window(ds))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def fit(image: np.ndarray, rows: int | None, cols: int | None) -> np.ndarray:
    """``image`` scaled to fit within ``rows`` x ``cols`` (None: unbounded), aspect kept:
    box-filtered by the largest whole factor, then nearest-neighbour to the exact size;
    enlarged (nearest-neighbour) when both bounds exceed it."""
    height, width = image.shape[:2]
    scale = min(rows / height if rows else np.inf, cols / width if cols else np.inf)
    if not np.isfinite(scale) or scale == 1.0:
        return image
    out_r, out_c = max(1, round(height * scale)), max(1, round(width * scale))
    k = max(1, min(height // out_r, width // out_c))
    if k > 1:
        r, c = height // k * k, width // k * k
        blocks = image[:r, :c].reshape(r // k, k, c // k, k, *image.shape[2:])
        image = blocks.mean(axis=(1, 3)).round().astype(np.uint8)
        height, width = image.shape[:2]
    ri = ((np.arange(out_r) + 0.5) * height / out_r).astype(int)
    ci = ((np.arange(out_c) + 0.5) * width / out_c).astype(int)
    return np.ascontiguousarray(image[ri][:, ci])


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` fitted within ``size`` x ``size`` (aspect kept), never enlarged."""
    rows, cols = image.shape[:2]
    if rows <= size and cols <= size:
        return image
    return fit(image, size, size)


def region(image: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The ``width`` x ``height`` pixels from column ``x``, row ``y``; a negative width or
    height takes them leftwards or upwards and flips them (PS3.18 8.3.5.1.3 viewport's
    sw, sh). :class:`RenderError` when the region leaves the image or is empty."""
    rows, cols = image.shape[:2]
    x0, x1 = sorted((x, x + width))
    y0, y1 = sorted((y, y + height))
    if width == 0 or height == 0 or x0 < 0 or y0 < 0 or x1 > cols or y1 > rows:
        raise RenderError(f"region {x},{y},{width},{height} is not within {cols}x{rows}")
    out = image[y0:y1, x0:x1]
    if width < 0:
        out = out[:, ::-1]
    if height < 0:
        out = out[::-1]
    return np.ascontiguousarray(out)


def png(image: np.ndarray) -> bytes:
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG (ISO 10918-1, libjpeg-turbo through imagecodecs) at ``quality``
    (1-100): grey or RGB."""
    return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(image), level=quality))


def rendered(data: bytes, frame: int = 0, window: Window | None = None) -> np.ndarray:
    """Frame ``frame`` (0-based, the only one decoded) of the Part 10 object ``data`` as
    8-bit grey or RGB: :func:`display` of :func:`decode_frame`."""
    ds = part10.read(data)
    try:
        info = PixelInfo.of(ds)
    except ValueError as exc:
        raise RenderError(f"no image to show: {exc}") from None
    return display(decode_frame(ds, info, frame), ds, info, window)


def preview_png(
    data: bytes,
    frame: int = 0,
    window: Window | None = None,
    size: int | None = None,
) -> bytes:
    """The PNG of frame ``frame`` (0-based) of the Part 10 object ``data``."""
    image = rendered(data, frame, window)
    if size is not None:
        image = thumbnail(image, size)
    return png(image)
