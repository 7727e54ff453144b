"""WADO-RS: retrieve studies, series, instances, their metadata, bulk data and frames
(PS3.18 10.4), from the index and the store, through the codecs C-MOVE uses.

- Instances (10.4.1.1.1) are Part 10 files, one a part of a ``multipart/related;
  type="application/dicom"`` answer, each with its own ``Content-Type: application/dicom;
  transfer-syntax=UID`` (8.7.3.5). The ``transfer-syntax`` parameter of the Accept header:
  absent = Explicit VR Little Endian (8.7.3.4, the default for application/dicom), ``*`` =
  as stored (JPEG XL excepted: :func:`as_stored`), a UID = that syntax when compacs can
  produce it from every stored object (:func:`compacs.net.retrieve.target_syntax`: as
  received, native, or re-encoded losslessly and verified, as on C-MOVE), else 406
  naming it.
- Metadata (10.4.1.1.2) is the DICOM JSON model (PS3.18 F) of every attribute, bulk data
  (over :data:`BULK_THRESHOLD` bytes, and Pixel Data always) as a ``BulkDataURI`` to
  ``.../bulk/{path}`` (10.4.1.1.3), never inline Pixel Data.
- Frames (10.4.1.1.4) are native little endian ``application/octet-stream`` by default;
  with ``transfer-syntax=*`` the stored frames as they are (:func:`as_stored`), each part's
  Content-Type naming its media type and syntax (8.7.3.3.2, Table 8.7.3-5). Only the frames
  asked are read, and decoded only when a conversion needs it (:class:`StoredPixels`).

The answers stream: one instance (metadata document, frame) read and converted at a time,
in the web server's bounded thread pool, the next only once the one before was sent, so
that a study never has to fit in memory.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO, TypeVar

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames, get_frame
from pydicom.uid import UID

from compacs.codecs.convert import convert, data_set_for
from compacs.codecs.table import restorable
from compacs.codecs.transcode import VerificationFailed
from compacs.dicom import part10
from compacs.dicom.attributes import IMAGE, SERIES, STUDY
from compacs.dicom.syntaxes import NATIVE_SYNTAXES
from compacs.index import Catalogue, StoredInstance
from compacs.net.retrieve import NotAcceptable, target_syntax
from compacs.query import STUDY_ROOT, parse_identifier

EXPLICIT_LE = NATIVE_SYNTAXES[0]
DICOM = "application/dicom"
OCTET = "application/octet-stream"
BULK_THRESHOLD = 1024
"""Binary values longer than this are sent as BulkDataURI in metadata (bytes)."""
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
"""Float Pixel Data, Double Float Pixel Data, Pixel Data: never inline (10.4.1.1.2)."""
WILDCARDS = ("*/*", "*", "multipart/*")

# PS3.18 Table 8.7.3-5: the media type of a frame in a transfer syntax (else octet-stream)
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class WadoError(Exception):
    """A retrieve answered with a 4xx: status and the message naming the cause."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# -- Accept (PS3.18 8.7.3, RFC 9110 12.5.1) ---------------------------------------------
@dataclass(frozen=True)
class Wanted:
    """What the client asked for: the media type of each part and its transfer syntax
    parameter (None: not given; ``*``: as stored)."""

    media_type: str
    syntax: str | None


def _params(parts: Iterable[str]) -> dict[str, str]:
    out = {}
    for part in parts:
        name, _, value = part.partition("=")
        out[name.strip().lower()] = value.strip().strip('"').strip()
    return out


def wanted(accept: str | None, offered: tuple[str, ...]) -> list[Wanted]:
    """The media ranges of ``accept`` whose part type is one of ``offered`` (a wildcard:
    the first offered), in the client's order, ``q=0`` skipped (other q values are not
    ranked: the first acceptable wins); a ``multipart/related`` range names the part type
    in ``type=`` (8.7.3.3). No Accept: the first offered. 406 when none fits (8.7.1)."""
    if not accept or not accept.strip():
        return [Wanted(offered[0], None)]
    out = []
    for media_range in accept.split(","):
        media_type, *rest = (p.strip() for p in media_range.split(";"))
        params = _params(rest)
        if params.get("q", "1").rstrip("0").rstrip(".") in ("0", ""):
            continue
        media_type = media_type.lower()
        if media_type == "multipart/related":
            media_type = params.get("type", "*/*").lower()
        syntax = params.get("transfer-syntax") or None
        if media_type in offered:
            out.append(Wanted(media_type, syntax))
        elif media_type in WILDCARDS or media_type == offered[0].split("/")[0] + "/*":
            out.append(Wanted(offered[0], syntax))
    if not out:
        raise WadoError(406, f"Accept {accept!r}: this resource is sent as {', '.join(offered)}")
    return out


T = TypeVar("T")


def first_fit(candidates: list[Wanted], fit: Callable[[Wanted], T]) -> T:
    """What ``fit`` gives for the first candidate it does not refuse; the first refusal
    (a 406 naming the transfer syntax) when it refuses them all."""
    refusals = []
    for want in candidates:
        try:
            return fit(want)
        except WadoError as exc:
            refusals.append(exc)
    raise refusals[0]


Choice = tuple[str, ...]
"""The transfer syntaxes an object may be sent in, in order of preference: the first that
compacs converts it to is sent (:func:`first_conversion`), and its part names that one."""

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_XL = frozenset(
    ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
)
"""JPEG XL Lossless, JPEG XL JPEG Recompression, JPEG XL (PS3.5 8.2.15)."""


def as_stored(stored: str) -> Choice:
    """What ``transfer-syntax=*`` sends an object stored in ``stored`` in.

    ``*`` says the user agent accepts any transfer syntax and leaves the choice to the
    origin server (PS3.18 8.7.3, the transfer-syntax parameter; media types by syntax in
    Table 8.7.3-5). It is the stored syntax, except JPEG XL, which the clients that send
    ``*`` cannot decode: OHIF fetches frames with ``type=application/octet-stream;
    transfer-syntax=*``, dicomweb-client's instance retrieve asks ``*``, and neither they
    nor pydicom 3.0 know the JPEG XL UIDs. So:

    - JPEG XL JPEG Recompression (.4.111): the JPEG baseline bitstreams as received (.4.50,
      ``image/jpeg``), restored byte for byte (:func:`compacs.codecs.table.restorable`),
      no pixel decoded;
    - JPEG XL Lossless (.4.110) and JPEG XL (.4.112): JPEG-LS Lossless (.4.80,
      ``image/jls``), encoded and verified bit-exact as on C-MOVE; native (Explicit VR
      Little Endian) when JPEG-LS cannot carry the pixels.

    A client that names a JPEG XL UID gets that syntax (:func:`instance_syntax`)."""
    if stored not in JPEG_XL:
        return (stored,)
    return (*restorable(stored), JPEG_LS_LOSSLESS, EXPLICIT_LE)


def instance_syntax(stored: str, asked: str | None) -> Choice:
    """The syntaxes an instance stored in ``stored`` may be sent in: 8.7.3.4's default
    (Explicit VR Little Endian), ``*`` (:func:`as_stored`), or the one asked when compacs
    can produce it (else 406 naming it)."""
    if asked is None:
        return (EXPLICIT_LE,)
    if asked == "*":
        return as_stored(stored)
    try:
        return (target_syntax(stored, {asked}),)
    except NotAcceptable:
        raise WadoError(
            406, f"transfer-syntax={asked}: compacs cannot produce it from {stored}"
        ) from None


def frame_syntax(stored: str, want: Wanted) -> Choice:
    """The syntaxes frames may be sent in: octet-stream's default is native (Explicit VR
    Little Endian), an image type's the first syntax of that type (Table 8.7.3-5)."""
    if want.syntax is None and want.media_type != OCTET:
        asked: str | None = next(u for u, t in FRAME_MEDIA_TYPES.items() if t == want.media_type)
    else:
        asked = want.syntax
    choice = instance_syntax(stored, asked)
    typed = asked not in (None, "*") and want.media_type != OCTET
    if typed and FRAME_MEDIA_TYPES.get(choice[0]) != want.media_type:
        raise WadoError(406, f"transfer-syntax={asked} is not sent as {want.media_type}")
    return choice


UNCONVERTIBLE = (ValueError, VerificationFailed)
"""What a conversion raises when compacs cannot produce a syntax from an object (codec
unavailable, not decodable, verification failed): the next syntax of a :data:`Choice`."""


def first_conversion(choice: Choice, convert_to: Callable[[str], T]) -> tuple[str, T]:
    """The first syntax of ``choice`` that ``convert_to`` succeeds for, and its result;
    the last syntax's failure when none does."""
    for syntax in choice[:-1]:
        try:
            return syntax, convert_to(syntax)
        except UNCONVERTIBLE:
            continue
    return choice[-1], convert_to(choice[-1])


def frame_media_type(syntax: str) -> str:
    return FRAME_MEDIA_TYPES.get(syntax, OCTET)


# -- the instances a path names ------------------------------------------------------------
def select(
    index: Catalogue, study: str, series: str | None, instance: str | None
) -> list[StoredInstance]:
    """The instances under the study/series/instance of a WADO-RS path, in the index's
    order; 404 when there are none (10.4.1.2)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = IMAGE if instance else SERIES if series else STUDY
    ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    if instance:
        ds.SOPInstanceUID = instance
    found = [
        inst
        for inst in index.matching_instances(parse_identifier(ds, STUDY_ROOT))
        if inst["study_uid"] == study
        and (series is None or inst["series_uid"] == series)
        and (instance is None or inst["sop_instance_uid"] == instance)
    ]
    if not found:
        named = instance or series or study
        raise WadoError(
            404, f"no {'instance' if instance else 'series' if series else 'study'} {named} here"
        )
    return found


# -- parts -----------------------------------------------------------------------------------
def part10_file(data: bytes, inst: StoredInstance, choice: Choice) -> tuple[str, bytes]:
    """The stored object ``data`` as a Part 10 file (PS3.10 7.1) in the first syntax of
    ``choice`` it converts to, and that syntax."""

    def file_in(syntax: str) -> bytes:
        header = part10.file_header(inst["sop_class_uid"], inst["sop_instance_uid"], syntax)
        return header + data_set_for(data, syntax)

    return first_conversion(choice, file_in)


UNDEFINED_LENGTH = 0xFFFFFFFF
IMAGE_PIXEL_GROUP = 0x0028
SOP_TAGS = (0x00080016, 0x00080018)  # SOP Class UID, SOP Instance UID


@dataclass(frozen=True)
class StoredPixels:
    """The Pixel Data of a stored object, found in its file and never read whole: each
    frame is read when asked, from the encapsulated value through its Basic or Extended
    Offset Table or a fragment scan (PS3.5 A.4, pydicom's ``get_frame``), or sliced from
    native data (PS3.5 8.1.1)."""

    fp: BinaryIO
    ds: Dataset
    """Every attribute before Pixel Data."""
    value_at: int
    length: int

    @classmethod
    def open(cls, fp: BinaryIO) -> StoredPixels:
        """The Pixel Data of the Part 10 file ``fp`` (seekable); 400 when there is none."""
        ds = dcmread(fp, stop_before_pixels=True)
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        if syntax.is_deflated:  # the data set is one deflated stream (PS3.5 A.5): inflate it
            fp.seek(0)
            return cls.open(_inflated(dcmread(fp)))
        at = fp.tell()
        endian = "<" if syntax.is_little_endian else ">"
        head = fp.read(12)
        if len(head) < 8 or struct.unpack(f"{endian}HH", head[:4]) != (0x7FE0, 0x0010):
            raise WadoError(400, "the instance has no Pixel Data: it has no frames")
        if syntax.is_implicit_VR:
            (length,) = struct.unpack(f"{endian}L", head[4:8])
            return cls(fp, ds, at + 8, length)
        (length,) = struct.unpack(f"{endian}L", head[8:12])
        return cls(fp, ds, at + 12, length)

    @property
    def syntax(self) -> str:
        return str(self.ds.file_meta.TransferSyntaxUID)

    @property
    def count(self) -> int:
        """Number of Frames (PS3.3 C.7.6.6), 1 when absent."""
        return int(self.ds.get("NumberOfFrames") or 1)

    @property
    def encapsulated(self) -> bool:
        return self.length == UNDEFINED_LENGTH

    def frame_bytes(self) -> int:
        """Bytes of one native frame (PS3.5 8.1.1; 4:2:2 shares chroma, PS3.3
        C.7.6.3.1.2); 406 for bit-packed frames, which are not byte aligned."""
        ds = self.ds
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
        if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            bits = bits * 2 // 3
        if bits % 8:
            raise WadoError(406, "frames of bit-packed Pixel Data are not byte aligned")
        return bits // 8

    def frame(self, index: int) -> bytes:
        """Frame ``index`` (0-based) as stored: its bitstream, or its native bytes."""
        if self.encapsulated:
            self.fp.seek(self.value_at)
            eot = self.ds.get("ExtendedOffsetTable"), self.ds.get("ExtendedOffsetTableLengths")
            return get_frame(
                self.fp,
                index,
                number_of_frames=self.count,
                extended_offsets=eot if None not in eot else None,
            )
        size = self.frame_bytes()
        self.fp.seek(self.value_at + index * size)
        value = self.fp.read(size)
        if len(value) != size or (index + 1) * size > self.length:
            raise ValueError(f"frame {index + 1}: native Pixel Data too short (PS3.5 8.1.1)")
        return value

    def one_frame(self, index: int) -> bytes:
        """A Part 10 file of frame ``index`` alone, in the stored syntax: the SOP UIDs, the
        Image Pixel attributes (group 0028, Number of Frames 1) and that frame's Pixel Data,
        for the converters to decode or re-encode that frame and no other."""
        one = Dataset()
        one.file_meta = FileMetaDataset(self.ds.file_meta)
        for elem in self.ds:
            if elem.tag.group == IMAGE_PIXEL_GROUP or elem.tag in SOP_TAGS:
                one.add(elem)
        if "NumberOfFrames" in one:
            one.add_new(0x00280008, "IS", 1)  # a new element: the stored one stays as it is
        value = self.frame(index)
        if self.encapsulated:
            one.add_new(0x7FE00010, "OB", encapsulate([value]))
            one["PixelData"].is_undefined_length = True
        else:
            one.add_new(0x7FE00010, "OW" if int(self.ds.BitsAllocated) > 8 else "OB", value)
        return part10.write(one)


def _inflated(ds: Dataset) -> BytesIO:
    """``ds`` read from a Deflated Explicit VR Little Endian file, as an Explicit VR Little
    Endian one (the same data set, not deflated: PS3.5 A.5)."""
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    out = BytesIO(part10.write(ds))
    out.seek(0)
    return out


def frame(pixels: StoredPixels, number: int, choice: Choice) -> tuple[str, bytes]:
    """Frame ``number`` (1-based) in the first syntax of ``choice`` it converts to, and
    that syntax. Only that frame is read, and only it is decoded when a conversion needs
    it: as stored (encapsulated, or native little endian to native) it is the stored
    bytes, else that frame alone goes through the converters (:meth:`StoredPixels.one_frame`,
    :func:`compacs.codecs.convert.convert`: restored, decoded, or re-encoded and verified)."""
    index = number - 1
    stored = pixels.syntax

    def frame_in(syntax: str) -> bytes:
        if syntax == stored and pixels.encapsulated:
            return pixels.frame(index)
        if syntax in NATIVE_SYNTAXES and stored in NATIVE_SYNTAXES:
            return pixels.frame(index)  # little endian native either way: the same bytes
        converted = convert(pixels.one_frame(index), syntax).dataset
        if UID(syntax).is_encapsulated:
            return next(generate_frames(converted.PixelData, number_of_frames=1))
        bits = int(converted.Rows) * int(converted.Columns) * int(converted.SamplesPerPixel)
        bits *= int(converted.BitsAllocated)
        if bits % 8:
            raise WadoError(406, "frames of bit-packed Pixel Data are not byte aligned")
        native: bytes = converted.PixelData  # a Dataset's elements are Any to a checker
        return native[: bits // 8]

    return first_conversion(choice, frame_in)


def number_of_frames(data: bytes) -> int:
    """Number of Frames (0028,0008) of the Part 10 object ``data``; 1 when absent."""
    ds = part10.read(data, pixels=False)
    return int(ds.get("NumberOfFrames") or 1)


def frame_numbers(text: str, count: int) -> list[int]:
    """The 1-based frame list of a frames path (10.4.1.1.4); 400 naming a bad number."""
    numbers = []
    for item in text.split(","):
        if not item.strip().isdigit() or not 1 <= int(item) <= count:
            raise WadoError(
                400, f"frame {item!r}: frames are numbered 1 to {count} (NumberOfFrames)"
            )
        numbers.append(int(item))
    return numbers


# -- metadata and bulk data -------------------------------------------------------------------
def _paths(ds: Dataset, prefix: str, out: dict[int, str]) -> None:
    """``out``: each element's bulk data path (``tag``, ``tag/item/tag``...) by identity."""
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        out[id(elem)] = path
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value):
                _paths(item, f"{path}/{number}/", out)


def metadata(data: bytes, instance_uri: str) -> dict[str, Any]:
    """The DICOM JSON of a stored object (PS3.18 F.2), binary values over
    :data:`BULK_THRESHOLD` and the pixel data as BulkDataURI (F.2.6)."""
    ds = part10.read(data)
    paths: dict[int, str] = {}
    _paths(ds, "", paths)

    def uri(elem: DataElement) -> str:
        return f"{instance_uri}/bulk/{paths[id(elem)]}"

    doc = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=uri)
    for tag in PIXEL_TAGS:
        key = f"{tag:08X}"
        if key in doc and "BulkDataURI" not in doc[key]:
            doc[key] = {"vr": doc[key]["vr"], "BulkDataURI": f"{instance_uri}/bulk/{key}"}
    return doc


def bulk(data: bytes, path: str) -> bytes:
    """The value at ``path`` of a stored object; Pixel Data native little endian."""
    steps = path.strip("/").split("/")
    if len(steps) == 1 and steps[0].upper() in {f"{t:08X}" for t in PIXEL_TAGS}:
        ds = convert(data, EXPLICIT_LE).dataset
    else:
        ds = part10.read(data)
    try:
        while len(steps) > 1:
            ds = ds[int(steps[0], 16)].value[int(steps[1])]
            steps = steps[2:]
        value = ds[int(steps[0], 16)].value
    except (KeyError, IndexError, ValueError):
        raise WadoError(404, f"no bulk data at {path}") from None
    if not isinstance(value, bytes):
        raise WadoError(404, f"{path} is not bulk data")
    return value


# -- multipart/related (RFC 2387, PS3.18 8.6.1.2) ----------------------------------------------
Produce = Callable[[], Awaitable[list[tuple[str, bytes]]]]


def multipart_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


async def multipart(
    boundary: str, first: list[tuple[str, bytes]], producers: list[Produce]
) -> AsyncIterator[bytes]:
    """The body: the ``first`` parts (made before the answer began, so that their failure
    was still a 4xx/5xx), then each producer's parts, a producer called only once the
    parts before were sent (the server's ``send`` waits while the client does not read:
    one instance at a time in memory). The closing delimiter comes last (RFC 2046 5.1.1):
    a producer that fails ends the body without it (see ``PartsResponse``)."""
    for content_type, body in first:
        yield _part(boundary, content_type)
        yield body
        yield b"\r\n"
    for produce in producers:
        for content_type, body in await produce():
            yield _part(boundary, content_type)
            yield body
            yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _part(boundary: str, content_type: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


async def json_array(
    first: bytes, producers: list[Callable[[], Awaitable[bytes]]]
) -> AsyncIterator[bytes]:
    """A JSON array streamed one document at a time (RFC 8259 5): ``first`` made before
    the answer began, each producer called when the documents before were sent."""
    yield b"["
    yield first
    for produce in producers:
        yield b","
        yield await produce()
    yield b"]"


def new_boundary() -> str:
    return uuid.uuid4().hex


def json_document(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
