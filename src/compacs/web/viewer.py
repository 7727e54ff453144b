"""The OHIF viewer on its own port: the prebuilt static app, its configuration, DICOMweb.

OHIF (npm ``@ohif/app``, fetched by ``make ohif``) is built with its public path baked in
as ``/``, so it gets the root of a port of its own (``[viewer] port``), served by a second
:class:`compacs.web.server.WebServer` in the node process. On that port:

- ``/app-config.js`` generated here (:func:`app_config`): one DICOMweb data source at this
  same port's ``/dicom-web`` (same origin: no CORS);
- ``/dicom-web``: :func:`compacs.web.dicomweb.mount`, the routes and authentication of the
  main port;
- every other path: a file of the build, or ``index.html`` for OHIF's client-side routes
  (``/``, the study list; ``/viewer?StudyInstanceUIDs=...``; other modes' paths).

The main port's layers apply (Host allow-list, head and body limits, thread pool) with a
Content-Security-Policy of the viewer's own (:func:`content_security_policy`). With
credentials configured every request here wants them (RFC 7617 Basic, which a browser's
prompt sends to the whole origin afterwards, DICOMweb requests of the app included); a
token-only configuration works too: the prompt takes any user name and the token as the
password (:meth:`Credentials.admits`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from compacs.security import Credentials
from compacs.web import dicomweb
from compacs.web.api import App
from compacs.web.asgi import (
    BodyLimit,
    Endpoint,
    HeadLimit,
    Limits,
    SecurityHeaders,
    http_exception,
)
from compacs.web.auth import CHALLENGE

log = logging.getLogger(__name__)

OHIF_VERSION = "3.13.2"  # the Makefile's OHIF_VERSION
DEFAULT_DIR = Path(__file__).resolve().parents[3] / ".cache" / "ohif" / OHIF_VERSION
"""Where ``make ohif`` puts the build (the repository's ``.cache/``)."""
REQUIRED = ("index.html", "app-config.js")
ROUTE = "/viewer"
"""OHIF's route that opens studies: ``/viewer?StudyInstanceUIDs=UID`` (its basic mode)."""
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


class ViewerMissing(RuntimeError):
    """No OHIF build where ``[viewer] dir`` points."""


def build_dir(settings: Any) -> Path:
    """The OHIF build served: ``[viewer] dir``, else the one ``make ohif`` fetched."""
    return Path(settings.viewer_dir) if settings.viewer_dir else DEFAULT_DIR


def missing_problem(folder: Path) -> str | None:
    """Why ``folder`` is not an OHIF build (one line saying how to get one), or None."""
    absent = [name for name in REQUIRED if not (folder / name).is_file()]
    if not absent:
        return None
    return (
        f"viewer off: no OHIF build in {folder} ({', '.join(absent)} missing); "
        f"`make ohif` fetches @ohif/app {OHIF_VERSION} there, or set [viewer] dir "
        "([viewer] port = 0 silences this)"
    )


def study_url(host: str, study_uid: str, *, port: int) -> str:
    """The viewer's page of one study, on ``host`` (a Host header's name, or an address)."""
    name = host if host.startswith("[") or ":" not in host else f"[{host}]"
    return f"http://{name}:{port}{ROUTE}?StudyInstanceUIDs={study_uid}"


def app_config(name: str = "compacs") -> str:
    """OHIF's ``window.config`` (its ``app-config.js``, keys as in the package's own
    ``config/default.js``) with one data source: this port's ``/dicom-web``, QIDO-RS and
    WADO-RS as compacs serves them (PS3.18 10.4, 10.6)."""
    root = dicomweb.ROOT  # relative: OHIF resolves it against the page's origin
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": name,
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": root,
            "qidoSupportsIncludeField": True,  # includefield, repeated or comma-separated
            "imageRendering": "wadors",  # frames, in the stored syntax (transfer-syntax=*)
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,  # accepted, matching stays exact (query.py)
            "supportsWildcard": True,  # '*' and '?' (PS3.4 C.2.2.2.4)
            "staticWado": False,  # a real origin server: it filters searches itself
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "dicomUploadEnabled": False,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,  # same origin
        "showCPUFallbackMessage": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


def content_security_policy(index_html: bytes) -> str:
    """What the viewer's pages may load: their own scripts (the inline ones of
    ``index.html`` by hash), WebAssembly codecs, workers from itself or blob: URLs, images
    from data:/blob:, requests to this origin only; no eval, no frame, no plug-in, no other
    origin."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(index_html)
        if body.strip()
    )
    return (
        f"default-src 'none'; script-src 'self' 'wasm-unsafe-eval' {hashes}; "
        "worker-src 'self' blob:; connect-src 'self'; img-src 'self' data: blob:; "
        "style-src 'self' 'unsafe-inline'; font-src 'self' data:; manifest-src 'self'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )


WORKER_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval'; "
    "connect-src 'self'; worker-src 'self' blob:"
)
"""The policy of a worker's script (a worker takes its policy from its own response,
CSP3 4.2.3 / HTML 10.2.4): OHIF's image decoders are Emscripten builds whose embind glue
makes functions with ``new Function`` (the CharLS, OpenJPEG, libjpeg-turbo workers), which
needs ``'unsafe-eval'``; a worker has no DOM and reaches only this origin."""
WORKER_DESTINATIONS = {"worker", "sharedworker"}
"""``Sec-Fetch-Dest`` of a worker script's request (Fetch Metadata, W3C)."""


class WorkerPolicy:
    """Answers a worker script's request (``Sec-Fetch-Dest: worker``) with
    :data:`WORKER_CSP`, every other one with the page's policy (``SecurityHeaders``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dest = dict(scope.get("headers", [])).get(b"sec-fetch-dest", b"").decode("latin-1")
        if scope["type"] != "http" or dest not in WORKER_DESTINATIONS:
            await self.app(scope, receive, send)
            return

        async def send_worker_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = WORKER_CSP
            await send(message)

        await self.app(scope, receive, send_worker_policy)


class RequireAuth:
    """Every request on the viewer's port carries the credentials (401 with a Basic
    challenge otherwise, RFC 7617 2): the browser then sends them for the whole origin."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app, self.credentials = app, credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            authorization = dict(scope["headers"]).get(b"authorization")
            if not self.credentials.admits(
                authorization.decode("latin-1") if authorization else None
            ):
                body = b"authentication required"
                response = Response(body, 401, headers={"WWW-Authenticate": CHALLENGE})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AppFiles(StaticFiles):
    """The build's files; a path of OHIF's own routes (no file extension) gets
    ``index.html``, which routes it in the browser. Dot-files (the stamp) are not served.
    Every file is revalidated (``no-cache``, its ETag): a new build shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if any(part.startswith(".") for part in Path(path).parts):
            raise HTTPException(404)
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or "." in Path(path).name:
                raise
            response = await super().get_response("index.html", scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


@dataclass(frozen=True)
class ViewerApp:
    """The viewer port's ASGI application and the build it serves."""

    application: Starlette
    folder: Path


def viewer_app(
    app: App, folder: Path, credentials: Credentials, hosts: list[str], limits: Limits
) -> ViewerApp:
    """The viewer port's application (see the module docstring); :class:`ViewerMissing`
    when ``folder`` holds no build."""
    problem = missing_problem(folder)
    if problem:
        raise ViewerMissing(problem)
    endpoint = Endpoint(app, credentials, limits.worker_threads)
    config = app_config().encode()
    headers = {
        "Content-Security-Policy": content_security_policy((folder / "index.html").read_bytes())
    }

    async def serve_config(request: Request) -> Response:
        return Response(
            config, 200, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    middleware = [
        Middleware(SecurityHeaders, headers=headers),
        Middleware(WorkerPolicy),
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False),
        Middleware(HeadLimit),
        Middleware(BodyLimit, max_body=limits.max_body, larger=limits.larger_body),
    ]
    if credentials.required:
        middleware.append(Middleware(RequireAuth, credentials=credentials))
    routes = [
        dicomweb.mount(app, credentials, endpoint.run),
        Route("/app-config.js", serve_config, methods=["GET", "HEAD"]),
        Mount("/", AppFiles(directory=folder, html=True)),
    ]
    handlers: dict[Any, Any] = {HTTPException: http_exception}
    application = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    return ViewerApp(application, folder)
