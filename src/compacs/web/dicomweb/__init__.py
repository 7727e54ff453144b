"""DICOMweb (PS3.18) at ``/dicom-web``: one Starlette Mount, one module per service.

QIDO-RS (:mod:`.qido`) today; WADO-RS and STOW-RS are to be added beside it as more routes
of :func:`mount`. Every route here shares the web server's layers (security headers, Host
allow-list, head and body limits, CORS as configured: global middleware) and, as the REST
API does, its authentication (401 with ``WWW-Authenticate``), strict URL decoding (each
value percent-decoded once) and bounded pool of handler threads. Errors are JSON
``{"error": ...}`` naming the parameter (PS3.18 8.6.1 leaves the payload to the origin
server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from compacs.dicom.attributes import IMAGE, SERIES, STUDY
from compacs.dicom.uids import is_valid_uid
from compacs.web.auth import CHALLENGE, Credentials
from compacs.web.dicomweb import qido
from compacs.web.urls import BadUrl, query_params

log = logging.getLogger(__name__)

ROOT = "/dicom-web"
DICOM_JSON = "application/dicom+json"
# Media types a QIDO-RS answer can be sent as (PS3.18 8.7.3, 10.6.2), in the client's order
JSON_TYPES = {DICOM_JSON: DICOM_JSON, "application/json": "application/json"}
WILDCARD_TYPES = ("*/*", "application/*")

Runner = Callable[..., Awaitable[Any]]
"""Runs a synchronous handler in the web server's bounded thread pool."""


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
    value = request.path_params[name]
    if not is_valid_uid(value):
        raise Refused(400, f"the {name} path segment is not a UID (PS3.5 9.1)")
    return value


class DicomWeb:
    """The DICOMweb routes over the node's index (through :class:`compacs.web.api.App`)."""

    def __init__(self, app: Any, credentials: Credentials, run: Runner) -> None:
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
        service = f"{request.url.scheme}://{request.url.netloc}{ROOT}"
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


def _accept(request: Request, params: list[tuple[str, str]]) -> str | None:
    """The Accept header, or the ``accept`` query parameter that replaces it (PS3.18
    8.3.3.1)."""
    given = [value for key, value in params if key == "accept"]
    return ",".join(given) if given else request.headers.get("accept")


def mount(app: Any, credentials: Credentials, run: Runner) -> Mount:
    """The ``/dicom-web`` Mount: QIDO-RS's searches (PS3.18 10.6.1, Table 10.6.1-2)."""
    web = DicomWeb(app, credentials, run)
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
    return Mount(ROOT, routes=routes)
