"""WADO-URI (PS3.18 chapter 9, the URI Service): ``GET /wado?requestType=WADO&studyUID=
...&seriesUID=...&objectUID=...`` on the web port, with the same authentication as the
REST API and DICOMweb; also at ``/dicom-web/wado``. ``/wado`` is where Orthanc's plugin
serves it (its ``WadoRoot``), and what an OHIF ``wadoUriRoot`` names
(``http://host:port/wado``).

Parameters (each validated before the object is read; a malformed or missing required
one is a 400 naming it):

- ``requestType`` ``WADO`` (required); ``studyUID``, ``seriesUID``, ``objectUID``
  (required; a UID nothing is stored under is a 404).
- ``contentType``: ``application/dicom``, ``image/jpeg`` (the default) or ``image/png``;
  a list is taken in order, ``*/*`` and ``image/*`` mean JPEG; none of these is a 406.
- ``application/dicom``: the Part 10 object in ``transferSyntax`` (a UID compacs can
  produce, as WADO-RS and C-MOVE do, else 406; absent: Explicit VR Little Endian, as
  WADO-RS's default, PS3.18 8.7.3.4). Rendering parameters with it are a 400.
- ``image/jpeg`` and ``image/png``: rendered by :mod:`compacs.web.render` as WADO-RS's
  rendered resources are: ``frameNumber`` (1-based, default 1), ``windowCenter`` and
  ``windowWidth`` (both or neither; LINEAR, PS3.3 C.11.2.1.2), ``region``
  (``xmin,ymin,xmax,ymax`` fractions of the image, 0.0-1.0), then ``rows`` / ``columns``
  (the image scaled to fit, aspect kept), ``imageQuality`` 1-100 (JPEG).
- Not supported: ``anonymize=yes`` (the standard lets a server refuse it) and
  ``presentationUID`` / ``presentationSeriesUID`` (no presentation states are applied):
  400 naming them rather than an answer that silently ignores them. ``annotation`` is
  accepted and not applied (a 299 Warning says so); ``charset`` (text only) is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from compacs.dicom.uids import is_valid_uid
from compacs.web import render
from compacs.web.dicomweb import wado
from compacs.web.dicomweb.rendered import (
    JPEG,
    MAX_VIEWPORT,
    PNG,
    encode,
    parse_quality,
    refuse,
)
from compacs.web.dicomweb.resource import Resource
from compacs.web.render import RenderError, Window
from compacs.web.urls import query_params

DICOM = wado.DICOM
CONTENT_TYPES = (JPEG, PNG, DICOM)
IMAGE_PARAMETERS = (
    "frameNumber",
    "windowCenter",
    "windowWidth",
    "region",
    "rows",
    "columns",
    "imageQuality",
)
REFUSED_PARAMETERS = ("presentationUID", "presentationSeriesUID")
UID_PARAMETERS = ("studyUID", "seriesUID", "objectUID")


@dataclass(frozen=True)
class UriRequest:
    """A WADO-URI request, validated."""

    study: str
    series: str
    instance: str
    content_type: str
    syntax: str | None = None
    frame: int = 1
    window: Window | None = None
    region: tuple[float, float, float, float] | None = None
    rows: int | None = None
    columns: int | None = None
    quality: int = 90
    ignored: tuple[str, ...] = ()


def _single(params: list[tuple[str, str]]) -> dict[str, str]:
    given: dict[str, str] = {}
    for key, value in params:
        if key in given:
            raise wado.WadoError(400, f"{key} is given more than once")
        given[key] = value
    return given


def content_type(text: str | None) -> str:
    """The first of ``contentType``'s media types compacs sends (9: a list is allowed)."""
    if text is None or not text.strip():
        return JPEG
    for item in text.split(","):
        media = item.split(";")[0].strip().lower()
        if media in CONTENT_TYPES:
            return media
        if media in ("*/*", "image/*"):
            return JPEG
    raise wado.WadoError(406, f"contentType={text!r}: compacs sends {', '.join(CONTENT_TYPES)}")


def _positive(given: dict[str, str], name: str, upper: int) -> int | None:
    if name not in given:
        return None
    text = given[name]
    if not text.strip().isdigit() or not 1 <= int(text) <= upper:
        raise refuse(name, text, f"an integer 1-{upper}")
    return int(text)


def _window(given: dict[str, str]) -> Window | None:
    names = ("windowCenter", "windowWidth")
    if not any(n in given for n in names):
        return None
    if not all(n in given for n in names):
        raise wado.WadoError(400, "windowCenter and windowWidth: give both or neither")
    values = []
    for name in names:
        try:
            value = float(given[name])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (name == "windowWidth" and value < 1):
            raise refuse(name, given[name], "a number (windowWidth >= 1, PS3.3 C.11.2.1.2)")
        values.append(value)
    return Window(values[0], values[1])


def _region(text: str) -> tuple[float, float, float, float]:
    expected = "xmin,ymin,xmax,ymax: fractions 0.0-1.0 of the image, min < max"
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise refuse("region", text, expected) from None
    if len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values):
        raise refuse("region", text, expected)
    xmin, ymin, xmax, ymax = values
    if not (xmin < xmax and ymin < ymax):
        raise refuse("region", text, expected)
    return xmin, ymin, xmax, ymax


def parse(params: list[tuple[str, str]]) -> UriRequest:
    """The request's parameters (see the module docstring); 400 naming the first wrong."""
    given = _single(params)
    if given.get("requestType") != "WADO":
        raise refuse("requestType", given.get("requestType", ""), "WADO (PS3.18 9)")
    for name in UID_PARAMETERS:
        if name not in given:
            raise wado.WadoError(400, f"{name} is required (PS3.18 9)")
        if not is_valid_uid(given[name]):
            raise refuse(name, given[name], "a UID (PS3.5 9.1)")
    if given.get("anonymize", "").lower() == "yes":
        raise wado.WadoError(400, "anonymize=yes: compacs does not anonymize")
    for name in REFUSED_PARAMETERS:
        if name in given:
            raise wado.WadoError(400, f"{name}: compacs applies no presentation state")
    media = content_type(given.get("contentType"))
    if media == DICOM:
        extra = [n for n in IMAGE_PARAMETERS if n in given]
        if extra:
            raise wado.WadoError(400, f"{extra[0]}: applies to image content types only")
    elif "transferSyntax" in given:
        raise wado.WadoError(400, "transferSyntax: applies to application/dicom only")
    syntax = given.get("transferSyntax")
    if syntax is not None and syntax != "*" and not is_valid_uid(syntax):
        raise refuse("transferSyntax", syntax, "a transfer syntax UID")
    ignored: tuple[str, ...] = ()
    if "annotation" in given:
        values = [v.strip().lower() for v in given["annotation"].split(",")]
        if not all(v in ("patient", "technique") for v in values):
            raise refuse("annotation", given["annotation"], "patient and/or technique")
        ignored = ("annotation",)
    return UriRequest(
        study=given["studyUID"],
        series=given["seriesUID"],
        instance=given["objectUID"],
        content_type=media,
        syntax=syntax,
        frame=_positive(given, "frameNumber", 1 << 31) or 1,
        window=_window(given),
        region=_region(given["region"]) if "region" in given else None,
        rows=_positive(given, "rows", MAX_VIEWPORT),
        columns=_positive(given, "columns", MAX_VIEWPORT),
        quality=parse_quality(given["imageQuality"]) if "imageQuality" in given else 90,
        ignored=ignored,
    )


def crop(image: np.ndarray, fractions: tuple[float, float, float, float]) -> np.ndarray:
    """The ``region`` of ``image`` given as fractions of its width and height."""
    rows, cols = image.shape[:2]
    xmin, ymin, xmax, ymax = fractions
    x0, y0 = math.floor(xmin * cols), math.floor(ymin * rows)
    x1, y1 = max(math.ceil(xmax * cols), x0 + 1), max(math.ceil(ymax * rows), y0 + 1)
    return render.region(image, x0, y0, min(x1, cols) - x0, min(y1, rows) - y0)


def rendered(data: bytes, req: UriRequest) -> bytes:
    """The frame asked for, windowed, cropped, scaled and encoded (all in a worker)."""
    count = wado.number_of_frames(data)
    if not 1 <= req.frame <= count:
        raise refuse("frameNumber", str(req.frame), f"1-{count} (NumberOfFrames)")
    try:
        image = render.rendered(data, req.frame - 1, req.window)
    except (RenderError, ValueError) as exc:
        raise wado.WadoError(406, f"cannot be rendered as {req.content_type}: {exc}") from None
    if req.region is not None:
        image = crop(image, req.region)
    if req.rows is not None or req.columns is not None:
        image = render.fit(image, req.rows, req.columns)
    return encode(image, req.content_type, req.quality)


class UriService(Resource):
    """The WADO-URI endpoint: an ``answer`` for
    :meth:`compacs.web.dicomweb.Retrieve.endpoint` (authentication, errors)."""

    async def answer(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        req = parse(query_params(request.scope.get("query_string", b"")))
        (inst,) = await self.select(req.study, req.series, req.instance)

        def work() -> bytes:
            data = self.stored(inst)
            if req.content_type != DICOM:
                return rendered(data, req)
            choice = wado.instance_syntax(inst["transfer_syntax_stored"], req.syntax)
            _, file = wado.part10_file(data, inst, choice)
            return file

        body = await self.run(work)
        headers = {}
        if req.ignored:
            headers["Warning"] = f'299 {request.url.netloc} "annotation: not supported"'
        return Response(body, 200, headers=headers, media_type=req.content_type)
