"""WADO-RS: retrieve studies, series, instances, their metadata, bulk data and frames
(PS3.18 10.4), from the index and the store, through the codecs C-MOVE uses.

- Instances (10.4.1.1.1) are Part 10 files, one a part of a ``multipart/related;
  type="application/dicom"`` answer, each with its own ``Content-Type: application/dicom;
  transfer-syntax=UID`` (8.7.3.5). The ``transfer-syntax`` parameter of the Accept header:
  absent = Explicit VR Little Endian (8.7.3.4, the default for application/dicom), ``*`` =
  as stored, a UID = that syntax when compacs can produce it from every stored object
  (:func:`compacs.net.retrieve.target_syntax`: as received, native, or re-encoded
  losslessly and verified, as on C-MOVE), else 406 naming it.
- Metadata (10.4.1.1.2) is the DICOM JSON model (PS3.18 F) of every attribute, bulk data
  (over :data:`BULK_THRESHOLD` bytes, and Pixel Data always) as a ``BulkDataURI`` to
  ``.../bulk/{path}`` (10.4.1.1.3), never inline Pixel Data.
- Frames (10.4.1.1.4) are native little endian ``application/octet-stream`` by default;
  with ``transfer-syntax=*`` the stored frames as they are, each part's Content-Type naming
  its media type and syntax (8.7.3.3.2, Table 8.7.3-5).

The answers stream: one instance read and converted at a time, in the web server's bounded
thread pool, so that a study never has to fit in memory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from compacs.codecs.convert import convert, data_set_for
from compacs.codecs.transcode import NATIVE_SYNTAXES
from compacs.dicom import part10
from compacs.dicom.attributes import IMAGE, SERIES, STUDY
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


def instance_syntax(stored: str, asked: str | None) -> str:
    """The syntax an instance stored in ``stored`` is sent in: 8.7.3.4's default, as
    stored, or the one asked when compacs can produce it (else 406 naming it)."""
    if asked is None:
        return EXPLICIT_LE
    if asked == "*":
        return stored
    try:
        return target_syntax(stored, {asked})
    except NotAcceptable:
        raise WadoError(
            406, f"transfer-syntax={asked}: compacs cannot produce it from {stored}"
        ) from None


def frame_syntax(stored: str, want: Wanted) -> str:
    """The syntax frames are sent in: octet-stream's default is native (Explicit VR Little
    Endian), an image type's the first syntax of that type (Table 8.7.3-5)."""
    if want.syntax is None and want.media_type != OCTET:
        asked: str | None = next(u for u, t in FRAME_MEDIA_TYPES.items() if t == want.media_type)
    else:
        asked = want.syntax
    syntax = instance_syntax(stored, asked)
    typed = asked not in (None, "*") and want.media_type != OCTET
    if typed and FRAME_MEDIA_TYPES.get(syntax) != want.media_type:
        raise WadoError(406, f"transfer-syntax={asked} is not sent as {want.media_type}")
    return syntax


def frame_media_type(syntax: str) -> str:
    return FRAME_MEDIA_TYPES.get(syntax, OCTET)


# -- the instances a path names ------------------------------------------------------------
def select(index: Any, study: str, series: str | None, instance: str | None) -> list[dict]:
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
def part10_file(data: bytes, inst: dict, syntax: str) -> bytes:
    """The stored object ``data`` as a Part 10 file in ``syntax`` (PS3.10 7.1)."""
    header = part10.file_header(inst["sop_class_uid"], inst["sop_instance_uid"], syntax)
    return header + data_set_for(data, syntax)


def frames(data: bytes, syntax: str) -> list[bytes]:
    """Every frame of the stored object ``data`` in ``syntax``: native frames (little
    endian, PS3.5 8.1.1) or the encapsulated ones (PS3.5 A.4)."""
    ds = convert(data, syntax).dataset
    if "PixelData" not in ds:
        raise WadoError(400, "the instance has no Pixel Data: it has no frames")
    count = int(ds.get("NumberOfFrames") or 1)
    if UID(syntax).is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
    if bits % 8:
        raise WadoError(406, "frames of bit-packed Pixel Data are not byte aligned")
    size, value = bits // 8, ds.PixelData
    return [value[n * size : (n + 1) * size] for n in range(count)]


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


def number_of_frames(data: bytes) -> int:
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return int(ds.get("NumberOfFrames") or 1)


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
    ds = dcmread(BytesIO(data))
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
        ds = dcmread(BytesIO(data))
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


async def multipart(boundary: str, producers: list[Produce]) -> AsyncIterator[bytes]:
    """The body: each producer's parts (content type, bytes), one producer at a time."""
    for produce in producers:
        for content_type, body in await produce():
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            yield body
            yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def new_boundary() -> str:
    return uuid.uuid4().hex


def json_body(items: list[dict[str, Any]]) -> bytes:
    return json.dumps(items, separators=(",", ":")).encode()
