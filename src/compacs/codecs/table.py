"""The codec table: which backend encodes and decodes each target transfer syntax.

Kept as data (one :class:`Codec` row per syntax) so that negotiation, policy validation,
transcoding and the documentation read the same facts. The backend choice and its
measurements are recorded in ``docs/codecs.md``; in short: imagecodecs for JPEG 2000,
HTJ2K and JPEG XL (it releases the GIL, so two worker threads use both cores, and its J2K
encoder survived multi-threaded use where pylibjpeg-openjpeg 2.6 crashed), pyjpegls for
encoding JPEG-LS (it writes the sample precision P = Bits Stored, which every reader needs
for signed pixels; imagecodecs writes P = 8 or 16), pydicom's RLE encoder with the
pylibjpeg-rle plugin for RLE Lossless.

Photometric Interpretation of the output follows PS3.5 8.2: JPEG 2000 and HTJ2K store
RGB with the reversible colour transform as YBR_RCT (8.2.4); JPEG-LS and RLE keep the
input's (8.2.3, 8.2.2); YBR_FULL_422 input is upsampled by the decoder and stored as
YBR_FULL.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import imagecodecs
import numpy as np
from pydicom.pixels import get_encoder
from pydicom.uid import RLELossless

from compacs.codecs.pixels import PixelInfo, as_unsigned, from_unsigned
from compacs.codecs.streams import (
    htj2k_rpcl_refusal,
    j2k_coding,
    jls_precision,
    rpcl_decompositions,
)

Encoder = Callable[[np.ndarray, PixelInfo, dict[str, Any]], bytes]
Decoder = Callable[[bytes, PixelInfo], np.ndarray]
Recompressor = Callable[[bytes], bytes]
"""One frame's bitstream to another bitstream (see :attr:`Codec.recompress`)."""
StreamRule = Callable[[bytes, PixelInfo], str | None]


class CodecUnavailable(ValueError):
    """This codec cannot carry these pixels (bit depth, sign, colour); try another."""


@dataclass(frozen=True)
class Carries:
    """What a codec's streams carry, as compacs encodes them (pydicom's encoding profiles
    hold the same facts per syntax): Bits Allocated, signed samples, and the Photometric
    Interpretations of colour input. Checked by :meth:`problem`, one check for every row."""

    bits_allocated: tuple[int, ...] | None = None
    """None: any the pixel module allows."""
    signed: bool = True
    colour: tuple[str, ...] | None = None
    """Photometric Interpretations taken with 3 samples per pixel; None: any."""
    why: str = ""
    """The standard's rule or the backend's limit behind the restriction, for the message."""

    def problem(self, info: PixelInfo) -> str | None:
        """Why pixels of ``info`` cannot be carried, or None."""
        if self.bits_allocated and info.bits_allocated not in self.bits_allocated:
            return f"Bits Allocated {info.bits_allocated} (it takes {_either(self.bits_allocated)})"
        if info.signed and not self.signed:
            return "signed samples (it takes unsigned ones)"
        if info.samples_per_pixel == 3 and self.colour and info.photometric not in self.colour:
            return f"colour as {info.photometric} (it takes {_either(self.colour)})"
        return None


def _either(values: tuple[object, ...]) -> str:
    return " or ".join(str(v) for v in values)


ANY_PIXELS = Carries()


class ColourTransform(StrEnum):
    """What the stream does with 3-sample input, and so the Photometric Interpretation
    stored with it (PS3.5 8.2)."""

    NONE = "none"
    """The input's interpretation is kept (JPEG-LS 8.2.3, RLE 8.2.2, JPEG XL 8.2.15)."""
    J2K_MCT = "j2k-mct"
    """A J2K/HTJ2K stream with the multiple component transform is YBR_RCT (reversible)
    or YBR_ICT (irreversible) (8.2.4, 8.2.14); without it, the input's."""
    JPEG_YCBCR = "jpeg-ycbcr"
    """JPEG's JFIF YCbCr of RGB, no subsampling: YBR_FULL (8.2.1)."""


@dataclass(frozen=True)
class Option:
    """The one setting a codec takes in a rule (``near``, ``quality``, ``ratio``)."""

    name: str
    valid: Callable[[float], bool]
    expected: str
    """What ``valid`` accepts, for the message: "1..255 (maximum error)"."""
    default: float | None = None
    """The value when the rule names none; None: the rule must name it."""

    def problem(self, options: dict[str, Any]) -> str | None:
        """Why ``options`` do not give this option a valid value, or None."""
        value = options.get(self.name, self.default)
        try:
            ok = value is not None and self.valid(float(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"{self.name} = {self.expected}"


@dataclass(frozen=True)
class Codec:
    name: str
    transfer_syntax: str
    backend: str
    lossless: bool
    encode: Encoder
    decode: Decoder
    experimental: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    read_as_others: Decoder | None = None
    """How other conformant decoders read the stream (verification reads it so) when that
    can differ from :attr:`decode`, which is lenient with what compacs stored earlier."""
    recompresses: str = ""
    """The transfer syntax whose bitstreams this codec recompresses as they are, no pixel
    decoded (:attr:`recompress`, :attr:`restore`); empty for a codec of pixels."""
    recompress: Recompressor | None = None
    restore: Recompressor | None = None
    """The received bitstream of a frame back from :attr:`recompress`'s output, every byte."""
    stream_rule: StreamRule | None = None
    """Why an encoded frame may not carry this row's transfer syntax (what the syntax asks
    of the stream beyond its pixels, e.g. HTJ2K Lossless RPCL's markers), or None."""
    carries: Carries = ANY_PIXELS
    colour_transform: ColourTransform = ColourTransform.NONE
    option: Option | None = None

    @property
    def encodes_pixels(self) -> bool:
        """Whether this codec encodes decoded pixels (False: it recompresses bitstreams)."""
        return self.recompress is None

    def stream_refusal(self, data: bytes, info: PixelInfo) -> str | None:
        """Why ``data`` may not be stored under :attr:`transfer_syntax`, or None."""
        return None if self.stream_rule is None else self.stream_rule(data, info)

    def verification_decode(self, data: bytes, info: PixelInfo) -> np.ndarray:
        """The frame as an outside decoder returns it (see :attr:`read_as_others`)."""
        return (self.read_as_others or self.decode)(data, info)

    def check(self, info: PixelInfo) -> None:
        """Raise CodecUnavailable when this codec cannot carry ``info``'s pixels."""
        problem = self.carries.problem(info)
        if problem:
            why = f": {self.carries.why}" if self.carries.why else ""
            raise CodecUnavailable(f"{self.name} cannot carry {problem}{why}")

    def output_photometric(self, info: PixelInfo, encoded: bytes) -> str:
        """The Photometric Interpretation of ``encoded`` made from pixels of ``info``: the
        input's, unless this codec's colour transform changed it (PS3.5 8.2)."""
        if info.samples_per_pixel != 3 or self.colour_transform is ColourTransform.NONE:
            return info.photometric
        if self.colour_transform is ColourTransform.JPEG_YCBCR:
            return "YBR_FULL"
        coding = j2k_coding(encoded)
        if coding is not None and coding.mct:
            return "YBR_RCT" if self.lossless else "YBR_ICT"
        return info.photometric


# -- JPEG-LS (ISO 14495-1): pyjpegls (CharLS) encodes, imagecodecs (CharLS) decodes -------
def _jls_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    """A stream with sample precision P = Bits Stored holding the samples' two's complement
    at Bits Stored (PS3.5 8.2.3). JPEG-LS has no sign: a reader sign-extends at P (pydicom)
    or at Bits Stored (DCMTK), and both agree only when P = Bits Stored. CharLS takes
    P >= 2."""
    if info.signed and info.bits_stored < 2:
        raise CodecUnavailable("JPEG-LS cannot carry signed 1-bit samples")
    import jpeg_ls  # pyjpegls

    samples = np.ascontiguousarray(as_unsigned(frame, info), dtype=info.dtype.newbyteorder("<"))
    extra = {"planar_configuration": 0} if info.samples_per_pixel > 1 else {}
    try:
        return bytes(
            jpeg_ls.encode_pixel_data(
                samples.tobytes(),
                lossy_error=int(options.get("near", 0)),
                rows=info.rows,
                columns=info.columns,
                samples_per_pixel=info.samples_per_pixel,
                bits_stored=max(info.bits_stored, 2),
                **extra,
            )
        )
    except RuntimeError as exc:
        if "destination buffer is too small" not in str(exc):
            raise
        # pyjpegls 1.5 sizes its output buffer from the pixel count and fails on tiny
        # images (SC_rgb_small_odd, 3x3 RGB; found by tests/test_fidelity_byteorder.py):
        # CharLS through imagecodecs writes P = 8 or 16; the verification, which reads
        # the stream as pydicom does, refuses it where that P would be misread.
        near = int(options.get("near", 0))
        return bytes(imagecodecs.jpegls_encode(samples, level=near or None))


def _jls_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    """Lenient: the samples sign-extended at Bits Stored, so streams compacs wrote before
    it used P = Bits Stored (P = 16 with the masked two's complement) decode right too."""
    return from_unsigned(imagecodecs.jpegls_decode(data), info)


def _jls_read_as_others(data: bytes, info: PixelInfo) -> np.ndarray:
    """The samples as pydicom reads them: signed ones sign-extended at the stream's
    precision P, not at Bits Stored (pydicom.pixels.decoders.base._apply_sign_correction)."""
    precision = jls_precision(data)
    if precision is None or precision > info.bits_allocated:
        raise ValueError(f"JPEG-LS precision {precision} with Bits Allocated {info.bits_allocated}")
    raw = np.asarray(imagecodecs.jpegls_decode(data))
    if not info.signed:
        return raw.astype(info.dtype, copy=False)
    shift = info.bits_allocated - precision
    unsigned = np.dtype(f"u{info.bits_allocated // 8}")
    signed = raw.astype(unsigned, copy=False).view(info.dtype)
    return (signed << shift) >> shift


# -- JPEG 2000 (ISO 15444-1) via imagecodecs / OpenJPEG ----------------------------------
def _j2k_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    return bytes(
        imagecodecs.jpeg2k_encode(
            frame,
            codecformat="J2K",  # a raw codestream, as PS3.5 A.4.4 requires (no JP2 box)
            reversible=True,
            mct=info.samples_per_pixel == 3 and info.photometric == "RGB",
            bitspersample=info.bits_stored,
            numthreads=1,
        )
    )


def _j2k_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    return imagecodecs.jpeg2k_decode(data, numthreads=1).astype(info.dtype, copy=False)


# -- JPEG 2000 lossy (.91) at a target ratio via pylibjpeg-openjpeg ---------------------
# Its encoder has rate control (imagecodecs' lossy J2K setting is not a ratio), but it
# crashed the process when called from two threads: one encode at a time, under a lock.
_OPENJPEG_LOCK = threading.Lock()
# pylibjpeg-openjpeg always codes 6 resolutions (5 decompositions): opj_start_compress()
# refuses images with a side under 2**5 (ISO 15444-1 B.5: each level halves the tile).
_OPENJPEG_MIN_SIDE = 32


def _j2k_lossy_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    """A 9-7 irreversible codestream of about ``native bytes / ratio`` (PS3.3 C.7.6.1.1.5:
    the ratio of the pixel data as stored, Bits Allocated per sample). OpenJPEG's rate
    counts the precision (Bits Stored) instead, so its ratio is scaled down to match."""
    target = float(options["ratio"])
    if min(info.rows, info.columns) < _OPENJPEG_MIN_SIDE:
        return _j2k_lossy_small(frame, info, target)
    from openjpeg.utils import encode_array

    colour = info.samples_per_pixel == 3 and info.photometric == "RGB"
    with _OPENJPEG_LOCK:
        return bytes(
            encode_array(
                np.ascontiguousarray(frame),
                bits_stored=info.bits_stored,
                photometric_interpretation=1 if colour else 2,
                use_mct=colour,
                compression_ratios=[target * info.bits_stored / info.bits_allocated],
                codec_format=0,  # J2K codestream (PS3.5 A.4.4)
            )
        )


def _j2k_lossy_small(frame: np.ndarray, info: PixelInfo, target: float) -> bytes:
    """Images with a side under 32 px: imagecodecs (OpenJPEG) with as many resolutions as
    the side allows and no rate control, so bisect its quality (PSNR, dB) for the best
    stream that meets ``target``; the finest when none does (a few pixels cannot: the
    headers alone exceed the budget), rather than ruin the image for nothing."""
    resolutions = min(6, max(1, min(info.rows, info.columns).bit_length()))

    def encode(psnr: float) -> bytes:
        return bytes(
            imagecodecs.jpeg2k_encode(
                frame,
                psnr,  # type: ignore[arg-type]  # its level is a PSNR in dB for lossy
                codecformat="J2K",
                reversible=False,
                mct=info.samples_per_pixel == 3 and info.photometric == "RGB",
                bitspersample=info.bits_stored,
                resolutions=resolutions,
                numthreads=1,
            )
        )

    low, high = 1.0, 150.0  # coarse .. fine
    best = encode(low)
    if frame.nbytes / len(best) < target:
        return encode(high)
    for _ in range(10):
        middle = (low + high) / 2
        encoded = encode(middle)
        if frame.nbytes / len(encoded) >= target:
            best, low = encoded, middle
        else:
            high = middle
    return best


# -- HTJ2K (ISO 15444-15) via imagecodecs / OpenJPH ---------------------------------------
def _htj2k_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    return bytes(
        imagecodecs.htj2k_encode(
            frame,
            reversible=True,
            rgb=info.samples_per_pixel == 3,
        )
    )


def _htj2k_rpcl_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    """HTJ2K Lossless RPCL (PS3.5 8.2.14, A.4.4): reversible, a TLM marker segment, one
    tile-part per resolution, a base resolution of at most 64 (OpenJPH's 5 decompositions,
    more for a side over 2048). RPCL is OpenJPH's default progression (imagecodecs passes
    none): :func:`_htj2k_rpcl_rule` checks every stream, so a change there is refused."""
    return bytes(
        imagecodecs.htj2k_encode(
            frame,
            reversible=True,
            rgb=info.samples_per_pixel == 3,
            resolutions=max(5, rpcl_decompositions(info.rows, info.columns)),  # levels
            tlm=True,
            tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
        )
    )


def _htj2k_rpcl_rule(data: bytes, info: PixelInfo) -> str | None:
    return htj2k_rpcl_refusal(data, info.rows, info.columns)


def _htj2k_lossy_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    """OpenJPH has no rate control: search the quantisation step (log-bisection) for the
    finest one whose stream meets the target ratio."""
    target = float(options["ratio"])
    rgb = info.samples_per_pixel == 3

    def encode(step: float) -> bytes:
        return bytes(imagecodecs.htj2k_encode(frame, level=step, reversible=False, rgb=rgb))

    low, high = math.log(1e-6), math.log(1.0)  # fine .. coarse
    best = encode(math.exp(high))
    for _ in range(14):
        middle = (low + high) / 2
        encoded = encode(math.exp(middle))
        if frame.nbytes / len(encoded) >= target:
            best, high = encoded, middle
        else:
            low = middle
    return best


def _htj2k_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    return imagecodecs.htj2k_decode(data).astype(info.dtype, copy=False)


# -- JPEG XL (ISO 18181) via imagecodecs / libjxl, experimental ----------------------------
def _jxl_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    return bytes(
        imagecodecs.jpegxl_encode(
            frame,
            lossless=True,
            effort=int(options.get("effort", 3)),
            bitspersample=info.bits_stored,
            usecontainer=False,  # a bare codestream (Supplement 232)
            numthreads=1,
        )
    )


def _jxl_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    return imagecodecs.jpegxl_decode(data, numthreads=1).astype(info.dtype, copy=False)


# -- JPEG XL JPEG Recompression (ISO 18181-2 JPEG reconstruction; PS3.5 8.2.15) ----------
# libjxl re-codes a JPEG bitstream's DCT coefficients losslessly and keeps what it needs
# (the jbrd box of the JPEG XL container) to write the original JPEG file again, byte for
# byte: the pixels stay the JPEG's, only the entropy coding changes. It takes 8-bit
# Huffman-coded DCT JPEG (process 1, baseline); 12-bit (.51) and lossless (.57, .70)
# streams it refuses.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _jxl_jpeg_recompress(jpeg: bytes) -> bytes:
    try:
        return bytes(imagecodecs.jpegxl_encode_jpeg(jpeg, numthreads=1))
    except imagecodecs.JpegxlError as exc:
        raise CodecUnavailable(f"libjxl cannot recompress this JPEG bitstream: {exc}") from None


def _jxl_jpeg_restore(data: bytes) -> bytes:
    return bytes(imagecodecs.jpegxl_decode_jpeg(data, numthreads=1))


def _no_pixel_encoder(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    raise CodecUnavailable(
        "JPEG XL JPEG Recompression takes a JPEG baseline bitstream, not pixels (PS3.5 8.2.15)"
    )


def _jxl_jpeg_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    """The pixels of the JPEG bitstream the stream restores, decoded as that JPEG is
    (:func:`_jpeg_decode`): the same values as before the recompression."""
    return _jpeg_decode(_jxl_jpeg_restore(data), info)


# -- JPEG baseline (ISO 10918-1 process 1) via imagecodecs / libjpeg-turbo, lossy ---------
def _jpeg_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    colour = info.samples_per_pixel == 3
    return bytes(
        imagecodecs.jpeg8_encode(
            frame,
            level=int(options.get("quality", 90)),
            colorspace="RGB" if colour and info.photometric == "RGB" else None,
            outcolorspace="YCBCR" if colour else None,
            subsampling="444" if colour else None,
        )
    )


def _jpeg_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    """Samples in the data set's own interpretation (PS3.5 8.2.1): YCbCr stays YCbCr, as
    pydicom's raw decode gives it; converting to RGB here made native copies whose
    Photometric Interpretation (still YBR_FULL) no longer described their pixels."""
    if info.samples_per_pixel != 3:
        return imagecodecs.jpeg8_decode(data)
    space = "YCBCR" if info.photometric.startswith("YBR") else "RGB"
    return imagecodecs.jpeg8_decode(data, colorspace=space, outcolorspace=space)


# -- RLE Lossless (PS3.5 Annex G) via pydicom + pylibjpeg-rle -----------------------------
def _rle_encode(frame: np.ndarray, info: PixelInfo, options: dict[str, Any]) -> bytes:
    encoder = get_encoder(RLELossless)
    return encoder.encode(
        frame,
        encoding_plugin="pylibjpeg",
        rows=info.rows,
        columns=info.columns,
        samples_per_pixel=info.samples_per_pixel,
        bits_allocated=info.bits_allocated,
        bits_stored=info.bits_stored,
        pixel_representation=int(info.signed),
        photometric_interpretation=info.photometric,
        number_of_frames=1,
        planar_configuration=0,
    )


def _rle_decode(data: bytes, info: PixelInfo) -> np.ndarray:
    from rle import decode_pixel_data  # pylibjpeg-rle

    raw = decode_pixel_data(
        data,
        version=2,
        rows=info.rows,
        columns=info.columns,
        bits_allocated=info.bits_allocated,
        byteorder="<",
    )
    # RLE segments are per sample (PS3.5 G.2): the decoded frame is colour-by-plane
    shape = (info.samples_per_pixel, info.rows, info.columns)
    planes = np.frombuffer(raw, dtype=info.dtype.newbyteorder("<")).reshape(shape)
    frame = planes[0] if info.samples_per_pixel == 1 else np.moveaxis(planes, 0, -1)
    return np.ascontiguousarray(frame).astype(info.dtype, copy=False)


OPENJPH = Carries(
    colour=("RGB",), why="OpenJPH's 3-component path always applies the colour transform"
)
LIBJXL = Carries(signed=False, why="libjxl takes no signed samples")
RATIO = Option("ratio", lambda v: v > 1, "a number > 1 (target compression ratio)")

CODECS: tuple[Codec, ...] = (
    Codec(
        "jpeg-ls",
        "1.2.840.10008.1.2.4.80",
        "pyjpegls (CharLS), P = Bits Stored",
        True,
        _jls_encode,
        _jls_decode,
        aliases=("jls", "jpegls"),
        read_as_others=_jls_read_as_others,
    ),
    Codec(
        "jpeg-ls-near",
        "1.2.840.10008.1.2.4.81",
        "pyjpegls (CharLS), P = Bits Stored",
        False,
        _jls_encode,
        _jls_decode,
        read_as_others=_jls_read_as_others,
        option=Option("near", lambda v: 1 <= int(v) <= 255, "1..255 (maximum error)"),
    ),
    Codec(
        "jpeg-2000",
        "1.2.840.10008.1.2.4.90",
        "imagecodecs (OpenJPEG)",
        True,
        _j2k_encode,
        _j2k_decode,
        aliases=("j2k", "jpeg2000"),
        colour_transform=ColourTransform.J2K_MCT,
    ),
    Codec(
        "jpeg-2000-lossy",
        "1.2.840.10008.1.2.4.91",
        "pylibjpeg-openjpeg (one at a time)",
        False,
        _j2k_lossy_encode,
        _j2k_decode,
        colour_transform=ColourTransform.J2K_MCT,
        option=RATIO,
    ),
    Codec(
        "htj2k",
        "1.2.840.10008.1.2.4.201",
        "imagecodecs (OpenJPH)",
        True,
        _htj2k_encode,
        _htj2k_decode,
        carries=OPENJPH,
        colour_transform=ColourTransform.J2K_MCT,
    ),
    Codec(
        "htj2k-rpcl",
        "1.2.840.10008.1.2.4.202",
        "imagecodecs (OpenJPH), RPCL + TLM",
        True,
        _htj2k_rpcl_encode,
        _htj2k_decode,
        stream_rule=_htj2k_rpcl_rule,
        carries=OPENJPH,
        colour_transform=ColourTransform.J2K_MCT,
    ),
    Codec(
        "htj2k-lossy",
        "1.2.840.10008.1.2.4.203",
        "imagecodecs (OpenJPH)",
        False,
        _htj2k_lossy_encode,
        _htj2k_decode,
        carries=OPENJPH,
        colour_transform=ColourTransform.J2K_MCT,
        option=RATIO,
    ),
    Codec(
        "jpeg-baseline",
        "1.2.840.10008.1.2.4.50",
        "imagecodecs (libjpeg-turbo)",
        False,
        _jpeg_encode,
        _jpeg_decode,
        carries=Carries(
            bits_allocated=(8,),
            signed=False,
            colour=("RGB",),
            why="8-bit unsigned samples (ISO 10918-1 baseline, PS3.5 8.2.1); colour is taken "
            "as RGB and stored as YBR_FULL",
        ),
        colour_transform=ColourTransform.JPEG_YCBCR,
        option=Option("quality", lambda v: 1 <= int(v) <= 100, "1..100", 90),
    ),
    Codec("rle", "1.2.840.10008.1.2.5", "pydicom + pylibjpeg-rle", True, _rle_encode, _rle_decode),
    Codec(
        "jpeg-xl",
        "1.2.840.10008.1.2.4.110",
        "imagecodecs (libjxl)",
        True,
        _jxl_encode,
        _jxl_decode,
        experimental=True,
        aliases=("jxl",),
        carries=LIBJXL,
    ),
    Codec(
        "jpeg-xl-jpeg",
        "1.2.840.10008.1.2.4.111",
        "imagecodecs (libjxl), the JPEG bitstream recompressed",
        True,  # as a transform: every bit of the JPEG comes back (the image stays lossy)
        _no_pixel_encoder,
        _jxl_jpeg_decode,
        experimental=True,
        aliases=("jxl-jpeg",),
        recompresses=JPEG_BASELINE,
        recompress=_jxl_jpeg_recompress,
        restore=_jxl_jpeg_restore,
        carries=LIBJXL,
    ),
)

BY_SYNTAX: dict[str, Codec] = {c.transfer_syntax: c for c in CODECS}
_BY_NAME: dict[str, Codec] = {n: c for c in CODECS for n in (c.name, *c.aliases)}


RECOMPRESSORS: dict[str, Codec] = {c.recompresses: c for c in CODECS if c.recompresses}
"""The codec that recompresses the bitstreams of a received syntax, by that syntax."""


def restorable(stored: str) -> tuple[str, ...]:
    """The syntaxes an object stored in ``stored`` gives back without decoding a pixel:
    the received bitstreams of a recompression (JPEG baseline from JPEG XL JPEG
    Recompression, PS3.5 8.2.15)."""
    codec = BY_SYNTAX.get(stored)
    return (codec.recompresses,) if codec is not None and codec.restore is not None else ()


def codec_for(name_or_uid: str) -> Codec:
    """The codec named by its short name (``jpeg-ls``) or its transfer syntax UID."""
    codec = BY_SYNTAX.get(name_or_uid) or _BY_NAME.get(name_or_uid.lower())
    if codec is None:
        known = ", ".join(c.name for c in CODECS)
        raise KeyError(f"no codec {name_or_uid!r} (known: {known}, or their transfer syntax UIDs)")
    return codec
