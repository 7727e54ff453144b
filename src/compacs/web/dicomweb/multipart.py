"""An incremental ``multipart/related`` reader (RFC 2387; body syntax RFC 2046 5.1.1) for
STOW-RS requests (PS3.18 10.5.1.2), fed the body chunk by chunk as it arrives.

It never holds more than one chunk plus a delimiter's length of body bytes: part data is
handed out as :class:`Data` events as soon as it cannot be the start of a delimiter. No
network and no framework here: :func:`boundary_of` reads the request's Content-Type, a
:class:`Reader` turns chunks into events.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

MULTIPART_RELATED = "multipart/related"
DICOM = "application/dicom"
MAX_PART_HEAD = 16 * 1024
"""Bytes at most of one part's header fields (the HTTP head's own bound is 16 KiB)."""
MAX_BOUNDARY = 70
"""RFC 2046 5.1.1: a boundary is 1 to 70 characters."""
_PADDING = b" \t"


class Unsupported(ValueError):
    """The request's media type is not one STOW-RS here accepts (HTTP 415)."""


class Malformed(ValueError):
    """The body (or its Content-Type) breaks the multipart syntax (HTTP 400)."""


@dataclass(frozen=True)
class Start:
    """A part begins; ``headers`` are its header fields (names in lower case)."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "text/plain")  # RFC 2046 5.1.1's default


@dataclass(frozen=True)
class Data:
    """The next bytes of the current part's body."""

    data: bytes


@dataclass(frozen=True)
class End:
    """The current part's body is complete (its closing delimiter was read)."""


Event = Start | Data | End


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """The lower-case media type of a Content-Type value and its parameters, unquoted
    (RFC 9110 8.3.1: a parameter value is a token or a quoted string)."""
    message = Message()
    message["content-type"] = value
    params = message.get_params() or []
    kind = params[0][0].lower() if params and "/" in params[0][0] else ""
    return kind, {name.lower(): str(v) for name, v in params[1:]}


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a STOW-RS request body: ``multipart/related`` whose ``type`` is
    ``application/dicom`` (PS3.18 10.5.1.2: quoted or not, clients differ). Other media
    types are :class:`Unsupported` (415, named); a missing or bad boundary :class:`Malformed`."""
    kind, params = media_type(content_type or "")
    if kind != MULTIPART_RELATED:
        named = kind or (content_type or "none")
        detail = {
            "application/dicom+json": " (DICOM JSON with bulk data is not supported)",
            "application/dicom+xml": " (DICOM XML with bulk data is not supported)",
            "multipart/form-data": "",
        }.get(kind, "")
        raise Unsupported(
            f"Content-Type {named} is not supported{detail}: STOW-RS here takes "
            f'multipart/related; type="{DICOM}" (PS3.18 10.5.1.2)'
        )
    part_type = media_type(params.get("type", ""))[0]
    if part_type != DICOM:
        raise Unsupported(
            f"multipart/related of type {params.get('type') or '(none)'} is not supported: "
            f'only type="{DICOM}" (Part 10 files; bulk data forms are not supported)'
        )
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= MAX_BOUNDARY or not boundary.isascii():
        raise Malformed("the Content-Type has no valid boundary parameter (RFC 2046 5.1.1)")
    return boundary.encode("ascii")


def parse_head(head: bytes) -> dict[str, str]:
    """A part's header fields (RFC 2045 / RFC 5322 field syntax), names in lower case."""
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise Malformed(f"part header line is not a field: {line[:40]!r}")
        fields[name.lower()] = value.strip()
    return fields


class Reader:
    """Turns the body's chunks into :data:`Event` s. The body is read as if a CRLF came
    before it, so the first dash-boundary at the very start is found like any delimiter
    (RFC 2046 5.1.1); the preamble and the epilogue are skipped. :meth:`close` at the end
    of the body raises :class:`Malformed` unless the close-delimiter was read."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.buffer = b"\r\n"
        self.state = "preamble"  # preamble -> after -> head -> body -> after ... -> done
        self.parts = 0

    @property
    def in_part(self) -> bool:
        """A part has started and its closing delimiter has not been read."""
        return self.state == "body"

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` (the next bytes of the body) completes."""
        if self.state == "done":
            return []  # the epilogue
        self.buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: :class:`Malformed` unless the close-delimiter came."""
        if self.state != "done":
            where = "inside a part" if self.state == "body" else "before its close-delimiter"
            raise Malformed(f"multipart body ended {where} (RFC 2046 5.1.1)")

    def _step(self, events: list[Event]) -> bool:
        """Consume what the buffer allows in the current state; False when it needs more."""
        if self.state == "preamble":
            at = self.buffer.find(self.delimiter)
            if at < 0:  # keep what may be the start of the delimiter
                self.buffer = self.buffer[-(len(self.delimiter) - 1) :]
                return False
            self.buffer, self.state = self.buffer[at + len(self.delimiter) :], "after"
            return True
        if self.state == "after":
            return self._after_delimiter()
        if self.state == "head":
            return self._head(events)
        if self.state == "body":
            return self._body(events)
        return False

    def _after_delimiter(self) -> bool:
        """``--`` closes the body; else transport padding and a CRLF start a part."""
        if len(self.buffer) < 2:
            return False
        if self.buffer.startswith(b"--"):
            self.state, self.buffer = "done", b""
            return False
        stripped = self.buffer.lstrip(_PADDING)
        if len(stripped) < 2:
            if len(self.buffer) > MAX_PART_HEAD:
                raise Malformed("transport padding after a boundary goes on and on")
            return False
        if not stripped.startswith(b"\r\n"):
            raise Malformed("a boundary delimiter line does not end in CRLF (RFC 2046 5.1.1)")
        self.buffer, self.state = stripped[2:], "head"
        return True

    def _head(self, events: list[Event]) -> bool:
        if self.buffer.startswith(b"\r\n"):  # no header fields at all
            head, rest = b"", self.buffer[2:]
        else:
            at = self.buffer.find(b"\r\n\r\n")
            if at < 0:
                if len(self.buffer) > MAX_PART_HEAD:
                    raise Malformed(f"a part's header fields exceed {MAX_PART_HEAD} bytes")
                return False
            head, rest = self.buffer[:at], self.buffer[at + 4 :]
        if len(head) > MAX_PART_HEAD:
            raise Malformed(f"a part's header fields exceed {MAX_PART_HEAD} bytes")
        events.append(Start(parse_head(head)))
        self.parts += 1
        self.buffer, self.state = rest, "body"
        return True

    def _body(self, events: list[Event]) -> bool:
        at = self.buffer.find(self.delimiter)
        if at < 0:
            keep = len(self.delimiter) - 1
            if len(self.buffer) > keep:
                events.append(Data(self.buffer[:-keep]))
                self.buffer = self.buffer[-keep:]
            return False
        if at:
            events.append(Data(self.buffer[:at]))
        events.append(End())
        self.buffer, self.state = self.buffer[at + len(self.delimiter) :], "after"
        return True
