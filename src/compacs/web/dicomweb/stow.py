"""STOW-RS, the Studies Store transaction (PS3.18 10.5): ``POST /studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body of Part 10 files.

The body is read as a stream (:mod:`.multipart`), never whole: each part is spooled, in
memory up to :data:`IN_MEMORY` bytes and then in an unnamed temporary file
(``data/stow-spool``, O_TMPFILE: nothing is left behind even by a crash), and bounded by
``[ingest] max_object_size``; the whole body is bounded by ``[http] max_stow_body`` (the
web server's BodyLimit). Each complete part becomes the same :class:`Received` a C-STORE
builds and goes through :meth:`Ingest.receive` in the handler thread pool: the same checks,
durability (stored only once durable and indexed), duplicates, compression and forwarding.
A part is stored when its closing delimiter has arrived; an incomplete one never is.

The answer is the Store Instances Response Module (PS3.18 10.5.3, Annex I) as
``application/dicom+json``: 200 all stored, 202 some stored and some failed, 400 none
stored for bad syntax only, 409 none stored otherwise (a Study Instance UID that is not the
URL's, a data set that does not match its SOP class, ...). The per-part reasons are DICOM
failure codes (PS3.18 I.2.2) in Failed SOP Sequence, with a human-readable ``Warning``
header field per failure.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydicom import dcmread
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from compacs.dicom.part10 import file_meta, joined
from compacs.dicom.status import Status
from compacs.dicom.uids import is_valid_uid
from compacs.ingest import Received
from compacs.security import Credentials
from compacs.web.api import App
from compacs.web.auth import CHALLENGE
from compacs.web.dicomweb import multipart

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
CALLING_AE = "STOW-RS"
"""The calling AE title of objects received over STOW-RS: HTTP has no AE title, and this one
(a valid AE, PS3.5 6.2) says where an object came from in the index, the File Meta's Source
Application Entity Title, the logs, and lets compression and routing rules match web uploads
(``calling_ae = "STOW-RS"``)."""
STORE_PATHS = ("/studies", "/studies/{study}")
"""The Store transaction's resources under the DICOMweb root (PS3.18 Table 10.5.1-1)."""
IN_MEMORY = 1 << 20
"""Bytes of a part kept in memory before it goes to its temporary file."""
META_ALLOWANCE = 1 << 16
"""Bytes a part may carry beyond ``[ingest] max_object_size``: preamble and File Meta."""
HEAD_BYTES = 1 << 20
"""Bytes of a part read to find its File Meta Information's end (PS3.10 7.1)."""
SYNTAX_FAILURE = frozenset({Status.CANNOT_UNDERSTAND})
"""Failure reasons that are bad syntax of the request (400 when nothing is stored)."""

Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Result:
    """What became of one part: stored (``reason`` None) or failed with a PS3.18 I.2.2
    Failure Reason and a comment."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    reason: int | None = None
    comment: str = ""

    @property
    def stored(self) -> bool:
        return self.reason is None


def failed(reason: int, comment: str, sop_class: str = "", sop_instance: str = "") -> Result:
    return Result(sop_class, sop_instance, reason=reason, comment=comment)


class PartSpool:
    """One part's body while it arrives: memory up to :data:`IN_MEMORY` bytes, then an
    unnamed temporary file in ``directory``; over ``limit`` bytes its data is dropped and
    the part marked :attr:`too_large`. :meth:`spill` and :meth:`read` do file I/O: run
    them in a handler thread."""

    def __init__(self, directory: Path, limit: int, wanted: bool = True) -> None:
        self.directory, self.limit, self.wanted = directory, limit, wanted
        self.memory = bytearray()
        self.size = 0
        self.file: Any = None
        self.too_large = False

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.too_large or not self.wanted:
            return
        if self.size > self.limit:
            self.too_large, self.memory = True, bytearray()
        else:
            self.memory += data

    @property
    def spill_due(self) -> bool:
        """Memory holds enough to write, or the part went over its limit with a file."""
        return len(self.memory) >= IN_MEMORY or (self.too_large and self.file is not None)

    def spill(self) -> None:
        """Move what is in memory to the temporary file (made on first use)."""
        if self.too_large:
            self.close()
            return
        if self.file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed by close()
        self.file.write(self.memory)
        self.memory = bytearray()

    def read(self) -> tuple[bytes, Any]:
        """The first :data:`HEAD_BYTES` of the part and a file object over the whole part."""
        if self.file is None:
            whole = io.BytesIO(bytes(self.memory))
        else:
            self.spill()
            self.file.flush()
            whole = self.file
        whole.seek(0)
        head = whole.read(HEAD_BYTES)
        return head, whole

    def close(self) -> None:
        """Drop the part's bytes; the temporary file goes with its descriptor."""
        self.memory = bytearray()
        if self.file is not None:
            self.file.close()
            self.file = None


class Store:
    """Stores the parts of one request through the node's ingest (:meth:`part`)."""

    def __init__(self, ingest: Any, called_ae: str, study: str | None) -> None:
        self.ingest, self.called_ae, self.study = ingest, called_ae, study

    def part(self, spool: PartSpool, content_type: str) -> Result:
        """Store one complete part (in a handler thread); its spool is closed after."""
        try:
            return self._part(spool, content_type)
        finally:
            spool.close()

    def _part(self, spool: PartSpool, content_type: str) -> Result:
        if not spool.wanted:
            return failed(
                Status.CANNOT_UNDERSTAND,
                f"part of type {content_type} is not {multipart.DICOM} (PS3.18 10.5.1.2)",
            )
        if spool.too_large:
            return failed(
                Status.OUT_OF_RESOURCES,
                f"part larger than {spool.limit} bytes ([ingest] max_object_size)",
            )
        head, whole = spool.read()
        try:
            meta = file_meta(head)
        except ValueError as exc:
            return failed(Status.CANNOT_UNDERSTAND, f"not a DICOM Part 10 file: {exc}")
        whole.seek(meta.offset)
        dataset = whole.read()
        uids = (meta.sop_class_uid, meta.sop_instance_uid)
        try:
            study, series = study_and_series(head[: meta.offset], dataset)
        except Exception as exc:  # pydicom raises many types on odd input
            return failed(Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}", *uids)
        if self.study is not None and study != self.study:
            return failed(
                Status.STUDY_UID_MISMATCH,
                "Study Instance UID (0020,000D) is not the one of the request's URL "
                "(PS3.18 10.5.1.1)",
                *uids,
            )
        outcome = self.ingest.receive(
            Received(dataset, meta.transfer_syntax, *uids, CALLING_AE, self.called_ae)
        )
        if not outcome.ok:
            return failed(outcome.status, outcome.comment or "", *uids)
        return Result(*uids, study, series)


def study_and_series(header: bytes, dataset: bytes) -> tuple[str, str]:
    """Study and Series Instance UIDs of a data set (pixel data not read)."""
    ds = dcmread(
        joined(header, dataset),
        stop_before_pixels=True,
        specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
    )
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))


def answer_status(results: list[Result]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some, 400 none for bad syntax, 409 none
    for other reasons (a Study Instance UID mismatch, out of resources, a mixture)."""
    stored = sum(result.stored for result in results)
    if results and stored == len(results):
        return 200
    if stored:
        return 202
    if all(result.reason in SYNTAX_FAILURE for result in results):
        return 400
    return 409


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 F.2.2); no Value when empty."""
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _reference(result: Result) -> dict[str, Any]:
    """The SOP Instance Reference Macro (PS3.3 Table 10-11), what of it is known."""
    item = {}
    if result.sop_class_uid:
        item["00081150"] = _element("UI", result.sop_class_uid)
    if result.sop_instance_uid:
        item["00081155"] = _element("UI", result.sop_instance_uid)
    return item


def response_module(results: list[Result], service: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) in DICOM JSON: Retrieve
    URL of the study (empty when the stored instances are not of one study), Failed SOP
    Sequence with Failure Reasons, Referenced SOP Sequence with each Retrieve URL."""
    stored = [result for result in results if result.stored]
    studies = {result.study_uid for result in stored}
    study_url = [f"{service}/studies/{studies.pop()}"] if len(studies) == 1 else []
    module: dict[str, Any] = {"00081190": _element("UR", *study_url)}
    failures = [
        {**_reference(result), "00081197": _element("US", result.reason)}
        for result in results
        if not result.stored
    ]
    if failures:
        module["00081198"] = _element("SQ", *failures)
    if stored:
        references = [
            {
                **_reference(result),
                "00081190": _element(
                    "UR",
                    f"{service}/studies/{result.study_uid}/series/{result.series_uid}"
                    f"/instances/{result.sop_instance_uid}",
                ),
            }
            for result in stored
        ]
        module["00081199"] = _element("SQ", *references)
    return module


def answer(results: list[Result], service: str) -> Response:
    """The response to a Store request whose body was read (or abandoned)."""
    body = json.dumps(response_module(results, service)).encode()
    warnings = [
        f'299 - "part {n}: 0x{result.reason:04X} {_header_safe(result.comment)}"'
        for n, result in enumerate(results, 1)
        if result.reason is not None
    ]
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    response = Response(body, answer_status(results), headers=headers)
    response.headers["Content-Type"] = DICOM_JSON  # exactly: dicomweb-client 0.61 compares
    return response


def _header_safe(text: str) -> str:
    """``text`` fit for a quoted-string in a header field (RFC 9110 5.6.4), shortened."""
    clean = "".join(c if c.isprintable() and c.isascii() and c not in '"\\' else "?" for c in text)
    return clean[:200]


async def body_chunks(request: Request, idle: float) -> AsyncIterator[bytes]:
    """The request body as it arrives (``request.stream()`` with a deadline): TimeoutError
    when the client sends nothing for ``idle`` seconds, ClientDisconnect when it goes."""
    while True:
        with anyio.fail_after(idle):
            message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] == "http.request":
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


@dataclass
class _Request:
    """One Store request's progress: the results so far and the part being received."""

    store: Store
    spool_dir: Path
    max_part: int
    results: list[Result] = field(default_factory=list)
    spool: PartSpool | None = None
    content_type: str = ""


class StoreRoute:
    """The STOW-RS endpoint (PS3.18 10.5): authentication, the URL's study, the request's
    media type, then the body part by part (see the module docstring)."""

    def __init__(
        self,
        app: App,
        credentials: Credentials,
        run: Runner,
        service_root: Callable[[Request], str],
    ) -> None:
        self.app, self.credentials, self.run = app, credentials, run
        self.service_root = service_root
        settings = app.settings
        self.spool_dir = Path(settings.data_dir) / "stow-spool"
        self.max_part = settings.max_object_size + META_ALLOWANCE
        self.idle = settings.http_body_timeout

    async def __call__(self, request: Request) -> Response:
        if not self.credentials.admits(request.headers.get("authorization")):
            return _error(401, "authentication required", {"WWW-Authenticate": CHALLENGE})
        study = request.path_params.get("study")
        if study is not None and not is_valid_uid(study):
            return _error(400, "the study path segment is not a UID (PS3.5 9.1)")
        if getattr(self.app, "ingest", None) is None:
            return _error(503, "this server does not store (no ingest)")
        try:
            boundary = multipart.boundary_of(request.headers.get("content-type"))
        except multipart.Unsupported as exc:
            return _error(415, str(exc))
        except multipart.Malformed as exc:
            return _error(400, str(exc))
        store = Store(self.app.ingest, self.app.settings.ae_title, study)
        state = _Request(store, self.spool_dir, self.max_part)
        reader = multipart.Reader(boundary)
        try:
            await self._read(request, reader, state)
        finally:
            if state.spool is not None:  # an incomplete part: never stored
                await self.run(state.spool.close)
        return answer(state.results, self.service_root(request))

    async def _read(self, request: Request, reader: multipart.Reader, state: _Request) -> None:
        """Feed the body to ``reader``, storing each part as it completes; whatever stops
        the body early becomes the result of the part it cut (if any)."""
        try:
            async for chunk in body_chunks(request, self.idle):
                for event in reader.feed(chunk):
                    await self._on(event, state)
            reader.close()
        except multipart.Malformed as exc:
            state.results.append(failed(Status.CANNOT_UNDERSTAND, str(exc)))
        except TimeoutError:
            log.warning("STOW-RS: the client sent nothing for %s s; answering", self.idle)
            state.results.append(
                failed(Status.CANNOT_UNDERSTAND, f"body incomplete: nothing for {self.idle} s")
            )
        except ClientDisconnect:
            log.warning("STOW-RS: the client went away after %d part(s)", reader.parts)
            state.results.append(failed(Status.CANNOT_UNDERSTAND, "the client went away"))
        except HTTPException as exc:  # BodyLimit's 413 while reading
            if not any(result.stored for result in state.results):
                raise
            state.results.append(failed(Status.OUT_OF_RESOURCES, str(exc.detail)))

    async def _on(self, event: multipart.Event, state: _Request) -> None:
        if isinstance(event, multipart.Start):
            kind = multipart.media_type(event.content_type)[0]
            state.content_type = kind or event.content_type
            state.spool = PartSpool(state.spool_dir, state.max_part, kind == multipart.DICOM)
        elif isinstance(event, multipart.Data):
            assert state.spool is not None
            state.spool.add(event.data)
            if state.spool.spill_due:
                await self.run(state.spool.spill)
        else:
            spool, state.spool = state.spool, None
            assert spool is not None
            result = await self.run(state.store.part, spool, state.content_type)
            if not result.stored:
                log.warning("STOW-RS: part refused (0x%04X): %s", result.reason, result.comment)
            state.results.append(result)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(body, status, headers=headers, media_type="application/json")


def with_store(routes: list[Route], store: StoreRoute) -> list[Route]:
    """``routes`` with POST added to the Store transaction's resources (:data:`STORE_PATHS`,
    where QIDO-RS and WADO-RS answer GET): one route per path, so a 405 names every method
    the resource allows."""

    def both(get: Callable[..., Any]) -> Callable[[Request], Awaitable[Any]]:
        async def endpoint(request: Request) -> Any:
            return await (store(request) if request.method == "POST" else get(request))

        return endpoint

    return [
        Route(route.path, both(route.endpoint), methods=["GET", "HEAD", "POST"])
        if route.path in STORE_PATHS
        else route
        for route in routes
    ]


def is_store_path(path: str, root: str) -> bool:
    """Whether ``path`` is a Store transaction's resource under ``root`` (``/dicom-web``)."""
    if not path.startswith(f"{root}/studies"):
        return False
    rest = path[len(root) :].rstrip("/").split("/")
    return rest[1:2] == ["studies"] and len(rest) in (2, 3)
