"""DICOMweb (PS3.18) at ``/dicom-web``: one Starlette Mount, one module per service.

QIDO-RS (:mod:`.qido`), WADO-RS (:mod:`.wado`) and STOW-RS (:mod:`.stow`, the only POST
routes). Every route here shares the web server's layers (security
headers, Host allow-list, head and body limits, CORS as configured: global middleware)
and, as the REST API does, its authentication (401 with ``WWW-Authenticate``), strict URL
decoding (each value percent-decoded once) and bounded pool of handler threads. Errors are JSON
``{"error": ...}`` naming the parameter (PS3.18 8.6.1 leaves the payload to the origin
server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import Send

from compacs.dicom.attributes import IMAGE, SERIES, STUDY
from compacs.dicom.uids import is_valid_uid
from compacs.index import StoredInstance
from compacs.security import Credentials
from compacs.web.api import App
from compacs.web.auth import CHALLENGE
from compacs.web.dicomweb import qido, rendered, stow, wado, wado_uri
from compacs.web.dicomweb.resource import Resource, Runner
from compacs.web.urls import BadUrl, query_params

log = logging.getLogger(__name__)

ROOT = "/dicom-web"
DICOM_JSON = "application/dicom+json"
# Media types a QIDO-RS answer can be sent as (PS3.18 8.7.3, 10.6.2), in the client's order
JSON_TYPES = {DICOM_JSON: DICOM_JSON, "application/json": "application/json"}
WILDCARD_TYPES = ("*/*", "application/*")


class Refused(Exception):
    """A request DICOMweb answers with a 4xx: status and the message naming the cause."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(body, status, headers=headers, media_type="application/json")


def negotiate(accept: str | None, offered: dict[str, str]) -> str:
    """The media type to answer with: the first range of ``Accept`` (RFC 9110 12.5.1) that
    names one of ``offered`` (a wildcard: the first offered), ranges with ``q=0`` skipped;
    no Accept: the first offered. :class:`Refused` 406 when none fits (PS3.18 8.7.1)."""
    if not accept or not accept.strip():
        return next(iter(offered.values()))
    for media_range in accept.split(","):
        media_type, *params = (p.strip() for p in media_range.split(";"))
        if any(p.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        media_type = media_type.lower()
        if media_type in offered:
            return offered[media_type]
        if media_type in WILDCARD_TYPES:
            return next(iter(offered.values()))
    raise Refused(406, f"Accept {accept!r}: this resource is sent as {', '.join(offered)} only")


def _uid(request: Request, name: str) -> str:
    """A UID path segment; :class:`Refused` 400 naming the segment unless it is a UID."""
    value: str = request.path_params[name]  # Starlette's path parameters: dict[str, Any]
    if not is_valid_uid(value):
        raise Refused(400, f"the {name} path segment is not a UID (PS3.5 9.1)")
    return value


class DicomWeb:
    """The DICOMweb routes over the node's index (through :class:`compacs.web.api.App`)."""

    def __init__(self, app: App, credentials: Credentials, run: Runner) -> None:
        self.app, self.credentials, self.run = app, credentials, run

    def search(self, level: str, path_keys: tuple[str, ...]) -> Callable[..., Awaitable[Response]]:
        """The endpoint of a QIDO-RS search at ``level`` whose path names ``path_keys``
        (``study``, ``series``): PS3.18 10.6.1."""

        async def endpoint(request: Request) -> Response:
            return await self._answer(request, level, path_keys)

        return endpoint

    async def _answer(self, request: Request, level: str, path_keys: tuple[str, ...]) -> Response:
        if not self.credentials.admits(request.headers.get("authorization")):
            return error(401, "authentication required", {"WWW-Authenticate": CHALLENGE})
        try:
            params = query_params(request.scope.get("query_string", b""))
            media_type = negotiate(_accept(request, params), JSON_TYPES)
            in_path = {key: _uid(request, key) for key in path_keys}
            search = qido.parse(level, params, in_path)
        except BadUrl as exc:
            return error(400, str(exc))
        except qido.BadSearch as exc:
            return error(400, str(exc))
        except Refused as exc:
            return error(exc.status, exc.message)
        service = _service_root(request)
        try:
            found = await self.run(self._search, search, service)
        except qido.BadSearch as exc:
            return error(400, str(exc))
        except Exception:
            log.exception("dicomweb: %s search failed", level.lower())  # no URL: PHI
            return error(500, "internal error")
        headers = {"Warning": ", ".join(found.warnings)} if found.warnings else None
        return Response(found.body, 200, headers=headers, media_type=media_type)

    def _search(self, search: qido.Search, service: str) -> qido.Found:
        pn_ci = self.app.settings.pn_case_insensitive
        return qido.run(self.app.index, search, service, pn_case_insensitive=pn_ci)


def failure(exc: BaseException) -> str:
    """A failure as the log may show it: the exception's type and the line that raised it,
    not its message, which can hold UIDs, names or the stored file's path (PHI)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}{where}"


class PartsResponse(StreamingResponse):
    """A streamed answer whose body may fail after it began (a stored object unreadable
    halfway through a series). The status is sent by then, so the failure ends the
    answer without the closing delimiter (RFC 2046 5.1.1) nor the last chunk (RFC 9112
    7.1): the server then closes the connection and the client sees a truncated body, never
    a complete one with parts missing. Logged without PHI (:func:`failure`)."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        sent = 0
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        except Exception as exc:
            log.error(
                "dicomweb: retrieve failed after %d bytes were sent: %s; connection closed "
                "without the closing delimiter",
                sent,
                failure(exc),
            )
            return  # no last message: uvicorn closes the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing: a HEAD answer's body


class Retrieve(Resource):
    """The WADO-RS endpoints (PS3.18 10.4.1, Table 10.4.1-1): authentication, the path's
    UIDs, the Accept header, then :mod:`.wado` in the bounded thread pool.

    Answers stream (:class:`PartsResponse`): the first instance (metadata document, frame)
    is made before the answer begins, so that its failure is still a 4xx/5xx; each next
    one only when the one before was sent. HEAD (RFC 9110 9.3.2) answers the status and
    headers of GET from the index and the Accept header alone: nothing is read or
    converted (Starlette runs the GET endpoint for HEAD and uvicorn drops the body, so a
    HEAD of a series converted every instance before)."""

    def __init__(self, app: App, credentials: Credentials, run: Runner) -> None:
        super().__init__(app, run)
        self.credentials = credentials

    def endpoint(
        self, answer: Callable[..., Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            if not self.credentials.admits(request.headers.get("authorization")):
                return error(401, "authentication required", {"WWW-Authenticate": CHALLENGE})
            try:
                params = query_params(request.scope.get("query_string", b""))
                uids = [
                    _uid(request, key) if key in request.path_params else None
                    for key in ("study", "series", "instance")
                ]
                return await answer(request, _accept(request, params), *uids)
            except BadUrl as exc:
                return error(400, str(exc))
            except (Refused, wado.WadoError) as exc:
                return error(exc.status, exc.message)
            except Exception as exc:
                log.error("dicomweb: retrieve failed: %s", failure(exc))
                return error(500, "internal error")

        return serve

    async def _stream(
        self, request: Request, part_type: str, producers: list[wado.Produce]
    ) -> Response:
        """The multipart/related answer of ``producers`` (see the class docstring)."""
        boundary = wado.new_boundary()
        media_type = wado.multipart_type(part_type, boundary)
        if request.method == "HEAD":
            return PartsResponse(_nothing(), 200, media_type=media_type)
        first = await producers[0]()
        body = wado.multipart(boundary, first, producers[1:])
        return PartsResponse(body, 200, media_type=media_type)

    async def instances(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """Study, series or instance as Part 10 files (10.4.1.1.1)."""
        candidates = wado.wanted(accept, (wado.DICOM,))
        found = await self.select(*uids)

        def fit(want: wado.Wanted) -> list[wado.Choice]:
            return [wado.instance_syntax(i["transfer_syntax_stored"], want.syntax) for i in found]

        choices = wado.first_fit(candidates, fit)

        def producer(inst: StoredInstance, choice: wado.Choice) -> wado.Produce:
            def work() -> list[tuple[str, bytes]]:
                syntax, body = wado.part10_file(self.stored(inst), inst, choice)
                return [(f"{wado.DICOM}; transfer-syntax={syntax}", body)]

            return lambda: self.run(work)

        pairs = zip(found, choices, strict=True)
        return await self._stream(request, wado.DICOM, [producer(i, c) for i, c in pairs])

    async def metadata(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """Every attribute of each instance as DICOM JSON, bulk data by URI (10.4.1.1.2):
        a JSON array streamed one instance's document at a time, each file read when its
        turn comes."""
        negotiate(accept, JSON_TYPES)
        found = await self.select(*uids)
        if request.method == "HEAD":
            return PartsResponse(_nothing(), 200, media_type=DICOM_JSON)
        service = _service_root(request)

        def producer(inst: StoredInstance) -> Callable[[], Awaitable[bytes]]:
            def work() -> bytes:
                uri = (
                    f"{service}/studies/{inst['study_uid']}/series/{inst['series_uid']}"
                    f"/instances/{inst['sop_instance_uid']}"
                )
                return wado.json_document(wado.metadata(self.stored(inst), uri))

            return lambda: self.run(work)

        producers = [producer(inst) for inst in found]
        first = await producers[0]()  # before the answer starts: a failure is a 4xx/5xx
        body = wado.json_array(first, producers[1:])
        return PartsResponse(body, 200, media_type=DICOM_JSON)

    async def frames(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """Frames of one instance (10.4.1.1.4), native unless asked otherwise; each frame
        read (and converted, when needed) alone, when its turn comes
        (:class:`wado.StoredPixels`)."""
        offered = (wado.OCTET, *dict.fromkeys(wado.FRAME_MEDIA_TYPES.values()))
        candidates = wado.wanted(accept, offered)
        (inst,) = await self.select(*uids)
        stored = inst["transfer_syntax_stored"]
        choice = wado.first_fit(candidates, lambda want: wado.frame_syntax(stored, want))
        text, head = request.path_params["frames"], request.method == "HEAD"

        def first() -> tuple[list[int], str, bytes]:
            with self.app.store.open(inst["storage_key"]) as fp:
                pixels = wado.StoredPixels.open(fp)
                numbers = wado.frame_numbers(text, pixels.count)
                if head:
                    return numbers, choice[0], b""
                return numbers, *wado.frame(pixels, numbers[0], choice)

        numbers, syntax, data = await self.run(first)  # a failure is still a 4xx/5xx
        content_type = f"{wado.frame_media_type(syntax)}; transfer-syntax={syntax}"

        def producer(number: int) -> wado.Produce:
            def work() -> list[tuple[str, bytes]]:
                with self.app.store.open(inst["storage_key"]) as fp:
                    _, value = wado.frame(wado.StoredPixels.open(fp), number, (syntax,))
                return [(content_type, value)]

            return lambda: self.run(work)

        producers = [lambda: _done([(content_type, data)]), *map(producer, numbers[1:])]
        return await self._stream(request, wado.frame_media_type(syntax), producers)

    async def bulk(self, request: Request, accept: str | None, *uids: str | None) -> Response:
        """A bulk data value named by a metadata BulkDataURI (10.4.1.1.3)."""
        wado.wanted(accept, (wado.OCTET,))
        (inst,) = await self.select(*uids)
        path = request.path_params["path"]
        value = await self.run(lambda: wado.bulk(self.stored(inst), path))
        return await self._stream(request, wado.OCTET, [lambda: _done([(wado.OCTET, value)])])


def _service_root(request: Request) -> str:
    """The absolute URL of ``/dicom-web`` as the client named this server (RFC 9110 7.2).
    A Host without a port while the server listens on another than the scheme's default
    gets the listening port: dicomweb-client 0.61 sends ``Host: 127.0.0.1`` to
    ``http://127.0.0.1:8042`` (its ``self.host``), and its BulkDataURIs would go to port 80."""
    netloc = request.url.netloc
    server = request.scope.get("server")
    default = 443 if request.url.scheme == "https" else 80
    if ":" not in netloc.rsplit("]", 1)[-1] and server and server[1] not in (None, default):
        netloc = f"{netloc}:{server[1]}"
    return f"{request.url.scheme}://{netloc}{ROOT}"


async def _done(parts: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return parts


def _accept(request: Request, params: list[tuple[str, str]]) -> str | None:
    """The Accept header, or the ``accept`` query parameter that replaces it (PS3.18
    8.3.3.1)."""
    given = [value for key, value in params if key == "accept"]
    return ",".join(given) if given else request.headers.get("accept")


def mount(app: App, credentials: Credentials, run: Runner) -> Mount:
    """The ``/dicom-web`` Mount: QIDO-RS's searches (PS3.18 10.6.1, Table 10.6.1-2) and
    WADO-RS's retrieves (10.4.1, Table 10.4.1-1)."""
    web = DicomWeb(app, credentials, run)
    retrieve = Retrieve(app, credentials, run)
    render = rendered.Rendered(app, run)
    searches = [
        ("/studies", STUDY, ()),
        ("/series", SERIES, ()),
        ("/instances", IMAGE, ()),
        ("/studies/{study}/series", SERIES, ("study",)),
        ("/studies/{study}/instances", IMAGE, ("study",)),
        ("/studies/{study}/series/{series}/instances", IMAGE, ("study", "series")),
    ]
    routes = [
        Route(path, web.search(level, keys), methods=["GET", "HEAD"])
        for path, level, keys in searches
    ]
    instance = "/studies/{study}/series/{series}/instances/{instance}"
    retrieves = [
        ("/studies/{study}", retrieve.instances),
        ("/studies/{study}/series/{series}", retrieve.instances),
        (instance, retrieve.instances),
        ("/studies/{study}/metadata", retrieve.metadata),
        ("/studies/{study}/series/{series}/metadata", retrieve.metadata),
        (f"{instance}/metadata", retrieve.metadata),
        (f"{instance}/frames/{{frames}}", retrieve.frames),
        (f"{instance}/bulk/{{path:path}}", retrieve.bulk),
        # rendered resources and thumbnails (10.4.1.1.3, Sup 203): see .rendered
        ("/studies/{study}/rendered", render.collection),
        ("/studies/{study}/series/{series}/rendered", render.collection),
        (f"{instance}/rendered", render.instance),
        (f"{instance}/frames/{{frames}}/rendered", render.frames),
        ("/studies/{study}/thumbnail", render.thumbnail),
        ("/studies/{study}/series/{series}/thumbnail", render.thumbnail),
        (f"{instance}/thumbnail", render.thumbnail),
        (f"{instance}/frames/{{frames}}/thumbnail", render.thumbnail),
        ("/wado", wado_uri.UriService(app, run).answer),  # WADO-URI, also at /wado
    ]
    routes += [
        Route(path, retrieve.endpoint(answer), methods=["GET", "HEAD"])
        for path, answer in retrieves
    ]
    store = stow.StoreRoute(app, credentials, run, _service_root)  # PS3.18 10.5
    routes = stow.with_store(routes, store)
    return Mount(ROOT, routes=routes)


def uri_service(app: App, credentials: Credentials, run: Runner) -> Route:
    """WADO-URI (PS3.18 9) at ``/wado``, where Orthanc serves it and OHIF's
    ``wadoUriRoot`` points (see :mod:`.wado_uri`)."""
    answer = wado_uri.UriService(app, run).answer
    return Route("/wado", Retrieve(app, credentials, run).endpoint(answer), methods=["GET", "HEAD"])


def is_store(path: str) -> bool:
    """Whether ``path`` is a STOW-RS resource (the only ones taking POST)."""
    return stow.is_store_path(path, ROOT)
