"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3 and Table 10.4.1-1;
Thumbnail resources, Sup 203): stored images as JPEG or PNG for a screen, through
:mod:`compacs.web.render` (the web preview's renderer: one frame decoded, the Modality LUT,
the VOI window, MONOCHROME1 inverted, colour as colour).

- Media types (8.7.4, Table 8.7.4-1): ``image/jpeg`` (the default) and ``image/png``;
  ``image/*`` or ``*/*`` is JPEG; anything else (``image/gif``, ``image/jp2``, video, text)
  is a 406 naming what is offered. ``multipart/related; type=image/...`` names the part
  type, as for the other WADO-RS resources.
- Query parameters (8.3.5, Table 8.3.5-1), each validated before anything is read, a
  malformed one a 400 naming it:
  ``window=center,width[,function]`` (8.3.5.1.4; function LINEAR (default), LINEAR_EXACT or
  SIGMOID, PS3.3 C.11.2.1.2/C.11.2.1.3); without it the data set's first window with its
  VOI LUT Function, else the frame's minimum..maximum;
  ``viewport=vw,vh[,sx,sy,sw,sh]`` (8.3.5.1.3): the region sx,sy,sw,sh of the image (each
  may be empty: 0, 0, the rest of the image; a negative sw/sh flips) scaled to fit within
  vw x vh, aspect kept; ``quality=1..100`` (8.3.5.1.2, JPEG only; default 90);
  ``annotation=patient,technique`` (8.3.5.1.1) and ``iccprofile`` other than ``no``
  (8.3.5.1.5) are accepted but not applied: the answer carries a 299 Warning saying so;
  ``charset`` only concerns annotation text, and is ignored.
- Which image (the standard leaves the choice to the origin server for multi-frame
  objects, studies and series): an instance's ``/rendered`` is its first frame,
  ``/frames/{list}/rendered`` the frames named (one: the image; several: a
  ``multipart/related`` answer, one part a frame); a series' or study's ``/rendered`` is
  ``multipart/related``, one part per instance (its first frame), rendered one at a time
  as the body streams, instances without pixels left out. A ``/thumbnail`` (default
  viewport 128x128, ``viewport`` honoured) is one image: the named frame, the instance's
  first frame, or the first instance of the series or study that renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from compacs.codecs.pixels import NotCompressible
from compacs.index import StoredInstance
from compacs.web import render
from compacs.web.dicomweb import wado
from compacs.web.dicomweb.resource import Resource
from compacs.web.render import RenderError, Window
from compacs.web.urls import query_params

JPEG, PNG = "image/jpeg", "image/png"
RENDERED_TYPES = (JPEG, PNG)
"""What compacs renders to (PS3.18 Table 8.7.4-1), the default first."""
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
"""A thumbnail's viewport when the request names none (pixels, both sides)."""
MAX_VIEWPORT = 4096
"""The largest viewport side rendered (pixels): an image is enlarged up to it at most."""
THUMBNAIL_CANDIDATES = 10
"""Instances tried in turn for a series or study thumbnail (the first that renders)."""
ANNOTATIONS = ("patient", "technique")
ICC_PROFILES = ("no", "yes", "srgb", "adobergb", "rommrgb")


def refuse(name: str, value: str, expected: str) -> wado.WadoError:
    return wado.WadoError(400, f"{name}={value!r}: expected {expected}")


@dataclass(frozen=True)
class Viewport:
    """``vw,vh`` and the source region ``sx,sy,sw,sh`` (None: the default)."""

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class Options:
    """A rendered request's parameters, validated."""

    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    ignored: tuple[str, ...] = ()
    """Parameters accepted but not applied (for the 299 Warning)."""


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4, PS3.3 C.11.2.1.2): width >= 1 for
    LINEAR, > 0 for LINEAR_EXACT and SIGMOID."""
    expected = (
        "center,width[,function]: numbers, width > 0 (>= 1 for LINEAR), function one of "
        f"{', '.join(render.VOI_FUNCTIONS)} (PS3.18 8.3.5.1.4)"
    )
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise refuse("window", text, expected)
    function = parts[2].upper() if len(parts) == 3 else "LINEAR"
    try:
        center, width = _number(parts[0]), _number(parts[1])
    except ValueError:
        raise refuse("window", text, expected) from None
    if function not in render.VOI_FUNCTIONS or width <= 0 or (function == "LINEAR" and width < 1):
        raise refuse("window", text, expected)
    return Window(center, width, function)


def _integer(text: str, name: str, value: str, expected: str) -> int:
    if not text.lstrip("-").isdigit():
        raise refuse(name, value, expected)
    return int(text)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3): vw, vh in 1..MAX_VIEWPORT; sx, sy >= 0;
    sw, sh non-zero (negative: flipped); each of sx..sh may be empty."""
    expected = (
        f"vw,vh[,sx,sy,sw,sh]: vw and vh 1-{MAX_VIEWPORT}, sx and sy >= 0, sw and sh "
        "non-zero, integers (PS3.18 8.3.5.1.3)"
    )
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise refuse("viewport", text, expected)
    vw, vh = (_integer(p, "viewport", text, expected) for p in parts[:2])
    region = [None if p == "" else _integer(p, "viewport", text, expected) for p in parts[2:]]
    sx, sy, sw, sh = region + [None] * (4 - len(region))
    if not (1 <= vw <= MAX_VIEWPORT and 1 <= vh <= MAX_VIEWPORT):
        raise refuse("viewport", text, expected)
    if (sx or 0) < 0 or (sy or 0) < 0 or sw == 0 or sh == 0:
        raise refuse("viewport", text, expected)
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def parse_quality(text: str) -> int:
    """``1..100`` (PS3.18 8.3.5.1.2)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise refuse("quality", text, "an integer 1-100 (PS3.18 8.3.5.1.2)")
    return int(text)


def _ignored(name: str, text: str, allowed: tuple[str, ...], skip: tuple[str, ...]) -> bool:
    """Whether ``name``'s comma-separated values (all in ``allowed``, else 400) ask for
    something compacs does not do (any not in ``skip``)."""
    values = [v.strip().lower() for v in text.split(",")]
    if not all(v in allowed for v in values):
        raise refuse(name, text, f"one or more of {', '.join(allowed)} (PS3.18 8.3.5.1)")
    return any(v not in skip for v in values)


def parse(params: list[tuple[str, str]]) -> Options:
    """The rendered query parameters of ``params`` (others are left to their own rules:
    ``accept`` to content negotiation, unknown ones ignored); each given at most once."""
    given: dict[str, str] = {}
    for key, value in params:
        if key in ("window", "viewport", "quality", "annotation", "iccprofile"):
            if key in given:
                raise wado.WadoError(400, f"{key} is given more than once")
            given[key] = value
    ignored = []
    if "annotation" in given and _ignored("annotation", given["annotation"], ANNOTATIONS, ()):
        ignored.append("annotation")
    if "iccprofile" in given and _ignored("iccprofile", given["iccprofile"], ICC_PROFILES, ("no",)):
        ignored.append("iccprofile")
    return Options(
        window=parse_window(given["window"]) if "window" in given else None,
        viewport=parse_viewport(given["viewport"]) if "viewport" in given else None,
        quality=parse_quality(given["quality"]) if "quality" in given else DEFAULT_QUALITY,
        ignored=tuple(ignored),
    )


def media_type(accept: str | None) -> str:
    """The rendered media type to answer with (8.7.4): 406 naming the offered ones."""
    return wado.wanted(accept, RENDERED_TYPES)[0].media_type


# -- rendering (in the handler thread pool) ---------------------------------------------------
def apply_viewport(image: np.ndarray, viewport: Viewport | None) -> np.ndarray:
    """The viewport's region of ``image`` scaled to fit within vw x vh (8.3.5.1.3)."""
    if viewport is None:
        return image
    rows, cols = image.shape[:2]
    sw = viewport.sw if viewport.sw is not None else cols - viewport.sx
    sh = viewport.sh if viewport.sh is not None else rows - viewport.sy
    try:
        image = render.region(image, viewport.sx, viewport.sy, sw, sh)
    except RenderError as exc:
        raise wado.WadoError(400, f"viewport: {exc}") from None
    return render.fit(image, viewport.height, viewport.width)


def encode(image: np.ndarray, media: str, quality: int) -> bytes:
    return render.jpeg(image, quality) if media == JPEG else render.png(image)


def image(data: bytes, frame: int, options: Options, media: str) -> bytes:
    """Frame ``frame`` (0-based) of the Part 10 object ``data`` rendered as ``media``;
    406 when the object holds no image (8.7.4: it cannot be sent as an image)."""
    try:
        pixels = render.rendered(data, frame, options.window)
    except (RenderError, NotCompressible) as exc:
        raise wado.WadoError(406, f"cannot be rendered as {media}: {exc}") from None
    return encode(apply_viewport(pixels, options.viewport), media, options.quality)


class Rendered(Resource):
    """The rendered and thumbnail endpoints: each an ``answer`` for
    :meth:`compacs.web.dicomweb.Retrieve.endpoint` (authentication, path UIDs, errors)."""

    def _request(self, request: Request, accept: str | None) -> tuple[str, Options]:
        media = media_type(accept)
        return media, parse(query_params(request.scope.get("query_string", b"")))

    def _one(self, request: Request, media: str, options: Options, body: bytes) -> Response:
        headers = {"Warning": _warning(request, options)} if options.ignored else None
        return Response(body, 200, headers=headers, media_type=media)

    async def instance(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """An instance's first frame (10.4.1.1.3)."""
        media, options = self._request(request, accept)
        (inst,) = await self.select(*uids)
        body = await self.run(lambda: image(self.stored(inst), 0, options, media))
        return self._one(request, media, options, body)

    async def frames(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """The frames named (10.4.1.1.3): one image, or one part a frame."""
        media, options = self._request(request, accept)
        (inst,) = await self.select(*uids)
        text = request.path_params["frames"]

        def work() -> list[bytes]:
            data = self.stored(inst)
            numbers = wado.frame_numbers(text, wado.number_of_frames(data))
            return [image(data, n - 1, options, media) for n in numbers]

        bodies = await self.run(work)
        if len(bodies) == 1:
            return self._one(request, media, options, bodies[0])
        return self._multipart(request, media, options, [_ready(media, b) for b in bodies])

    async def collection(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """A series' or study's instances, one part each (their first frame), streamed."""
        media, options = self._request(request, accept)
        found = await self.select(*uids)

        def producer(inst: StoredInstance) -> wado.Produce:
            def work() -> list[tuple[str, bytes]]:
                try:
                    return [(media, image(self.stored(inst), 0, options, media))]
                except wado.WadoError as exc:
                    if exc.status == 406:  # no pixels (SR, KO...): not an image, left out
                        return []
                    raise

            return lambda: self.run(work)

        return self._multipart(request, media, options, [producer(i) for i in found])

    async def thumbnail(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """One small image representing the resource (Sup 203)."""
        media, options = self._request(request, accept)
        if options.viewport is None:
            options = replace(options, viewport=Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        found = await self.select(*uids)
        frame_text = request.path_params.get("frames")

        def work() -> bytes:
            if frame_text is not None:
                data = self.stored(found[0])
                (number,) = wado.frame_numbers(frame_text, wado.number_of_frames(data))[:1]
                return image(data, number - 1, options, media)
            refusal = None
            for inst in found[:THUMBNAIL_CANDIDATES]:
                try:
                    return image(self.stored(inst), 0, options, media)
                except wado.WadoError as exc:
                    refusal = refusal or exc
            assert refusal is not None
            raise refusal

        return self._one(request, media, options, await self.run(work))

    def _multipart(
        self, request: Request, media: str, options: Options, producers: list[wado.Produce]
    ) -> Response:
        boundary = wado.new_boundary()
        headers = {"Warning": _warning(request, options)} if options.ignored else None
        body = wado.multipart(boundary, [], producers)
        return StreamingResponse(
            body, 200, headers=headers, media_type=wado.multipart_type(media, boundary)
        )


def _ready(media: str, body: bytes) -> wado.Produce:
    async def produce() -> list[tuple[str, bytes]]:
        return [(media, body)]

    return produce


def _warning(request: Request, options: Options) -> str:
    """The 299 Warning (PS3.18 8.1.2.2) naming the parameters accepted but not applied."""
    names = " and ".join(options.ignored)
    return f'299 {request.url.netloc} "{names}: not supported, the image is rendered without"'
