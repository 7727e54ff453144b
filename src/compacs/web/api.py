"""The REST API and the routes of the pages: (method, path) -> Response.

Independent of the HTTP server (``compacs.web.server``): :meth:`App.handle` takes a
method, a path and the query parameters and returns a :class:`Response`, so that every
route can be exercised without sockets. JSON documents are what the pages render too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from compacs.activity import Activity
from compacs.codecs.convert import NotConvertible, convert
from compacs.codecs.pixels import NotCompressible
from compacs.config import Settings
from compacs.dicom import part10
from compacs.dicom.attributes import IMAGE, PATIENT, SERIES, STUDY
from compacs.dicom.syntaxes import BY_UID, name_of
from compacs.index import Catalogue, Reports
from compacs.index.compression_state import CHANGED, reason_of
from compacs.ingest import Ingest
from compacs.storage import BlobStore
from compacs.web import openapi, pages
from compacs.web.queries import MAX_LIMIT, BadQuery, one, paging, search
from compacs.web.render import RenderError, Window, preview_png

Params = list[tuple[str, str]]


class WebIndex(Catalogue, Reports, Protocol):
    """The roles of the index the web pages, the REST API and DICOMweb use: what is
    stored (searches, retrieves) and the reports (stats, sizes, charts)."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc, indent=1, default=str).encode())


def html_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/html; charset=utf-8")


def _syntax(uid: str) -> dict[str, str]:
    return {"uid": uid, "name": name_of(uid)}


def _number(params: Params, name: str, kind: type = float) -> Any:
    value = dict(params).get(name)
    if value in (None, ""):
        return None
    try:
        return kind(value)
    except ValueError:
        raise HttpError(400, f"{name}={value!r}: expected a number") from None


class App:
    """Every route of the web server, over the node's index, store and activity."""

    def __init__(
        self,
        settings: Settings,
        index: WebIndex,
        store: BlobStore,
        activity: Activity,
        ingest: Ingest | None = None,
    ) -> None:
        self.settings, self.index, self.store, self.activity = settings, index, store, activity
        self.ingest = ingest  # STOW-RS stores through it (compacs.web.dicomweb.stow)
        self.viewer_link: Callable[[str, str], str] | None = None
        """(host name, study UID) -> the OHIF viewer's page of the study, when the viewer
        is served (set by compacs.web.server.build); else None."""
        uid = r"(?P<uid>[0-9.]{1,64})"
        routes: list[tuple[str, Callable[..., Response]]] = [
            (r"/api/openapi\.json", lambda p: json_response(openapi.document())),
            (r"/api/stats", lambda p: json_response(self.stats())),
            (r"/api/patients", lambda p: json_response(self.search(PATIENT, p))),
            (r"/api/patients/(?P<pid>[^/]*)", lambda p, pid: json_response(self.patient(pid))),
            (r"/api/studies", lambda p: json_response(self.search(STUDY, p))),
            (rf"/api/studies/{uid}", self.study_document),
            (r"/api/series", lambda p: json_response(self.search(SERIES, p))),
            (rf"/api/series/{uid}", lambda p, uid: json_response(self.series(uid))),
            (r"/api/instances", lambda p: json_response(self.search(IMAGE, p))),
            (rf"/api/instances/{uid}", lambda p, uid: json_response(self.instance(uid))),
            (rf"/api/instances/{uid}/preview\.png", self.preview),
            (rf"/api/instances/{uid}/file", self.file),
            (r"/", lambda p: html_response(pages.dashboard(self.stats()))),
            (r"/studies", self.studies_page),
            (rf"/studies/{uid}", self.study_page),
            (rf"/series/{uid}", self.series_page),
            (
                rf"/instances/{uid}",
                lambda p, uid: html_response(pages.instance(self.instance(uid), p)),
            ),
        ]
        self.routes = [(re.compile(pattern), handler) for pattern, handler in routes]
        self._wants_host = {self.study_document, self.study_page}

    def handle(self, method: str, path: str, params: Params, host: str | None = None) -> Response:
        """The answer to ``method path?params``; ``host``: the request's Host header (for
        links to the viewer's port)."""
        if method not in ("GET", "HEAD"):
            return json_response({"error": f"{method} is not supported: the API is read-only"}, 405)
        for pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match:
                groups: dict[str, str | None] = {
                    k: unquote(v) for k, v in match.groupdict().items()
                }
                if handler in self._wants_host:
                    groups["host"] = host
                try:
                    return handler(params, **groups)
                except HttpError as exc:
                    return self._error(path, exc.status, exc.message)
                except BadQuery as exc:
                    return self._error(path, 400, str(exc))
        return self._error(path, 404, f"no such resource: {path}")

    def _error(self, path: str, status: int, message: str) -> Response:
        if path.startswith("/api/"):
            return json_response({"error": message}, status)
        return html_response(pages.error(status, message), status)

    # -- documents ----------------------------------------------------------------------
    def search(self, level: str, params: Params) -> dict[str, Any]:
        return search(self.index, level, params, self.settings.pn_case_insensitive)

    def _one(self, level: str, keyword: str, value: str) -> dict[str, Any]:
        found = one(self.index, level, keyword, value)
        if found is None:
            raise HttpError(404, f"no {level.lower()} with {keyword} {value!r}")
        return found

    def patient(self, patient_id: str) -> dict[str, Any]:
        doc = self._one(PATIENT, "PatientID", patient_id)
        doc["studies"] = self._children(STUDY, "PatientID", patient_id or '""')
        doc["sizes"] = self.index.sizes(PATIENT, patient_id)
        return doc

    def study(self, uid: str, host: str | None = None) -> dict[str, Any]:
        """The study, its series and instances; ``viewer_url`` (OHIF's page of the study)
        when the viewer is served, on the host the client named."""
        doc = self._one(STUDY, "StudyInstanceUID", uid)
        if self.viewer_link is not None:
            doc["viewer_url"] = self.viewer_link(self._host_name(host), uid)
        doc["series"] = self._children(SERIES, "StudyInstanceUID", uid)
        doc["sizes"] = self.index.sizes(STUDY, uid)
        for series in doc["series"]:
            series["instances"] = self._children(
                IMAGE, "SeriesInstanceUID", series["SeriesInstanceUID"]
            )
        return doc

    def study_document(self, params: Params, uid: str, host: str | None = None) -> Response:
        return json_response(self.study(uid, host))

    def study_page(self, params: Params, uid: str, host: str | None = None) -> Response:
        return html_response(pages.study(self.study(uid, host)))

    def _host_name(self, host: str | None) -> str:
        """The name in a Host header (RFC 9110 7.2) without its port; without one, the
        listening address (loopback when listening on every address)."""
        if host:
            return host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
        listening = self.settings.http_host
        return "127.0.0.1" if listening in ("0.0.0.0", "::", "[::]") else listening

    def series(self, uid: str) -> dict[str, Any]:
        doc = self._one(SERIES, "SeriesInstanceUID", uid)
        doc["instances"] = self._children(IMAGE, "SeriesInstanceUID", uid)
        doc["sizes"] = self.index.sizes(SERIES, uid)
        return doc

    def _children(self, level: str, keyword: str, value: str) -> list[dict[str, Any]]:
        """Every child entity, however many (page after page of the search)."""
        items: list[dict[str, Any]] = []
        while True:
            params = [(keyword, value), ("limit", str(MAX_LIMIT)), ("offset", str(len(items)))]
            page = self.search(level, params)
            items += page["items"]
            if not page["more"]:
                break
        if level == IMAGE:
            items.sort(key=lambda i: _sort_number(i.get("InstanceNumber")))
        elif level == SERIES:
            items.sort(key=lambda i: _sort_number(i.get("SeriesNumber")))
        return items

    def instance(self, uid: str) -> dict[str, Any]:
        doc = self._one(IMAGE, "SOPInstanceUID", uid)
        where = self.index.locate(uid)
        if where is None:
            raise HttpError(404, f"no instance with SOPInstanceUID {uid!r}")
        doc.update(
            transfer_syntax_received=_syntax(where.transfer_syntax_received),
            transfer_syntax_stored=_syntax(where.transfer_syntax_stored),
            bytes_received=where.bytes_received,
            bytes_stored=where.bytes_stored,
            ratio=round(where.bytes_received / where.bytes_stored, 3) if where.bytes_stored else 1,
            sha256=where.sha256,
            **{k: where.extra.get(k) for k in ("calling_ae", "called_ae", "received_at")},
            stored_at=where.extra.get("stored_at"),
            compression=_compression(where.extra),
            links={
                "preview": f"/api/instances/{uid}/preview.png",
                "thumbnail": f"/api/instances/{uid}/preview.png?size=128",
                "file": f"/api/instances/{uid}/file",
            },
        )
        return doc

    def stats(self) -> dict[str, Any]:
        """``compacs stats --json``'s document, plus the queues, per day and activity."""
        doc = self.index.stats()
        doc["compression_queue"] = doc["pending"]
        doc["forwarding_queue"] = doc.get("forwarding", {})
        doc["per_day"] = self.index.received_per_day()
        doc["associations"] = self.activity.associations()
        doc["errors"] = self.activity.errors()
        return doc

    # -- binary -------------------------------------------------------------------------
    def _object(self, uid: str) -> tuple[Any, bytes]:
        where = self.index.locate(uid)
        if where is None:
            raise HttpError(404, f"no instance with SOPInstanceUID {uid!r}")
        try:
            return where, self.store.get(where.storage_key)
        except FileNotFoundError:
            raise HttpError(
                500, f"instance {uid}: its object {where.storage_key} is missing from the store"
            ) from None

    def preview(self, params: Params, uid: str) -> Response:
        center, width = _number(params, "wc"), _number(params, "ww")
        if (center is None) != (width is None) or (width is not None and width <= 0):
            raise HttpError(400, "give both wc and ww (ww > 0), or neither")
        frame = _number(params, "frame", int) or 1
        size = _number(params, "size", int)
        if size is not None and not 8 <= size <= 2048:
            raise HttpError(400, f"size={size}: expected 8-2048 pixels")
        _, data = self._object(uid)
        window = Window(center, width) if center is not None else None
        try:
            image = preview_png(data, frame - 1, window, size)
        except (RenderError, NotCompressible) as exc:
            raise HttpError(422, f"instance {uid}: {exc}") from None
        return Response(200, image, "image/png", {"Cache-Control": "private, max-age=300"})

    def file(self, params: Params, uid: str) -> Response:
        where, data = self._object(uid)
        target = dict(params).get("transfer_syntax")
        if target and target != where.transfer_syntax_stored:
            if target not in BY_UID:
                raise HttpError(400, f"transfer_syntax={target!r}: not a transfer syntax UID")
            try:
                converted = convert(data, target)
            except NotConvertible as exc:
                raise HttpError(400, f"transfer_syntax={target}: {exc}") from None
            except (NotCompressible, ValueError) as exc:
                raise HttpError(422, f"instance {uid} cannot be converted: {exc}") from None
            data = part10.write(converted.dataset)
        return Response(
            200,
            data,
            "application/dicom",
            {"Content-Disposition": f'attachment; filename="{uid}.dcm"'},
        )

    # -- pages --------------------------------------------------------------------------
    def series_page(self, params: Params, uid: str) -> Response:
        """A series' instances, a page of thumbnails at a time (``offset``, ``limit``)."""
        limit, offset = paging(params, default_limit=pages.INSTANCES_PER_PAGE)
        return html_response(pages.series(self.series(uid), offset, limit))

    def studies_page(self, params: Params) -> Response:
        wanted = [(k, v) for k, v in params if v != ""]
        return html_response(pages.studies(self.search(STUDY, wanted), wanted))


def _compression(extra: dict[str, Any]) -> dict[str, Any]:
    """The instance's compression state and note, and why it is stored as received (None
    when its object was compressed or has a lossy derivative)."""
    state, note = extra.get("compression"), extra.get("compression_note")
    kept = state not in CHANGED
    return {
        "state": state or "untouched",
        "note": note,
        "reason": reason_of(state, note) if kept else None,
    }


def _sort_number(value: Any) -> tuple[int, float]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, 0.0)
