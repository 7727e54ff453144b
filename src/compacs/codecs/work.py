"""The CPU part of one compression job: the stored object's bytes in, the verified encoding
(or the reason there is none) out.

This is what a compression worker process runs (:mod:`compacs.jobs.pool`): it needs no
index and no store, only the codecs layer, and it takes and returns plain picklable values
(bytes, codec names, options; an :class:`Encoding`). Everything that holds the GIL in a
job -- parsing, frame extraction, encode, decode-and-compare (PS3.5 8.2: lossless means
bit-exact, see :mod:`compacs.codecs.transcode`), encapsulation, the hash of the result --
happens here, so the node process keeps its core for receiving.

Between processes only names travel (issue 15: pickling the whole object through the
pipe cost ~4.5 ms a CT slice): the source is the stored file's path when the store is
local, and the encoded file comes back written, fsynced, in the store's spool directory
(:func:`spool`), for the node to rename into place. Bytes in and out remain for stores
without local files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Any

from compacs.codecs.convert import data_set_for
from compacs.codecs.lossy import DerivationRefused, derive
from compacs.codecs.pixels import NotCompressible
from compacs.codecs.table import Codec, CodecUnavailable, codec_for
from compacs.codecs.transcode import Transcoded, transcode
from compacs.dicom import part10
from compacs.dicom.attributes import extract


class Outcome(StrEnum):
    ENCODED = "encoded"
    NOT_COMPRESSIBLE = "not-compressible"  # nothing these codecs carry
    REFUSED = "refused"  # a lossy derivative compacs does not make (DerivationRefused)
    FAILED = "failed"  # every codec failed: ``note`` says why


@dataclass(frozen=True)
class Encoding:
    """What a job's CPU part returns: small, picklable, no codec objects."""

    outcome: Outcome
    note: str = ""
    data: bytes = b""
    """The new Part 10 file (``outcome`` ENCODED), unless it was spooled to ``path``."""
    path: str = ""
    """Where the new Part 10 file was written (fsynced) instead of ``data``: a file in the
    spool directory the caller named, now the caller's to rename or remove."""
    size: int = 0
    """Length of the new Part 10 file."""
    transfer_syntax: str = ""
    codec: str = ""
    sha256: str = ""
    """Hex SHA-256 of ``data``: computed once, here, where the bytes were made."""
    new_uid: str = ""
    """The SOP Instance UID of a lossy derivative."""
    attributes: dict[str, Any] | None = None
    """A lossy derivative's indexed attributes (:func:`compacs.dicom.attributes.extract`)."""
    messages: tuple[Message, ...] = field(default_factory=tuple)
    """What the libraries logged and warned in a worker process, for the node to emit
    naming the instance (:func:`encode_named`)."""


def encode_best(
    data: bytes, codecs: Sequence[Codec], options: Mapping[str, Any], lossy: bool
) -> Encoding:
    """The smallest verified encoding of the Part 10 file ``data`` among ``codecs``; a lossy
    one is a derived image with a new SOP Instance UID (PS3.3 C.7.6.1.1.5)."""
    return _lossy(data, codecs, options) if lossy else _lossless(data, codecs, options)


def encode_named(
    source: bytes | str,
    codecs: Sequence[str],
    options: Mapping[str, Any],
    lossy: bool,
    log_level: int = logging.WARNING,
    spool_dir: str | None = None,
) -> Encoding:
    """:func:`encode_best` with the codecs named (``codecs.table`` names): the entry point
    of a worker process, which looks the codecs up in its own table. ``source`` is the
    Part 10 file's bytes or its path; with ``spool_dir`` the encoded file is returned
    written there (:func:`spool`), not as bytes. The libraries' log records (at
    ``log_level`` and above) and warnings travel back with the result, in the order they
    came, for the node to emit as its own (one job at a time runs in a worker process, so
    what is caught here is this job's)."""
    data = source if isinstance(source, bytes) else read_file(source)
    messages: list[Message] = []
    with _caught(messages, log_level):
        result = encode_best(data, tuple(codec_for(name) for name in codecs), options, lossy)
    result = spooled(result, spool_dir)
    return replace(result, messages=tuple(messages)) if messages else result


def spooled(result: Encoding, spool_dir: str | None) -> Encoding:
    """``result`` with its encoded file written to ``spool_dir`` (:func:`spool`) instead
    of carried as bytes; as it is without a spool directory or an encoding."""
    if spool_dir is None or result.outcome is not Outcome.ENCODED:
        return result
    return replace(result, data=b"", path=spool(result.data, spool_dir))


@dataclass(frozen=True)
class Decoded:
    """What a decode for a peer returns: the data set (no File Meta) in ``transfer_syntax``,
    ready for a C-STORE-RQ (PS3.7 9.3.1.1), or the reason there is none."""

    data_set: bytes = b""
    transfer_syntax: str = ""
    error: str = ""
    """Why the object could not be brought to ``transfer_syntax`` (empty: it was)."""
    messages: tuple[Message, ...] = field(default_factory=tuple)


def to_peer_syntax(data: bytes, target: str) -> Decoded:
    """The stored Part 10 object ``data`` as a data set in ``target``, a syntax the peer
    accepted (:func:`compacs.codecs.convert.data_set_for`: decoded, or re-encoded losslessly
    and verified); an error is returned, not raised."""
    try:
        return Decoded(data_set_for(data, target), target)
    except Exception as exc:
        return Decoded(error=f"{type(exc).__name__}: {exc}"[:500])


def decode_for_peer(data: bytes, target: str, log_level: int = logging.WARNING) -> Decoded:
    """:func:`to_peer_syntax` as the entry point of a worker process for C-MOVE/C-GET
    sub-operations: what the libraries logged and warned travels back with the result
    (see :func:`encode_named`)."""
    messages: list[Message] = []
    with _caught(messages, log_level):
        result = to_peer_syntax(data, target)
    return replace(result, messages=tuple(messages)) if messages else result


@contextmanager
def _caught(messages: list[Message], log_level: int) -> Iterator[None]:
    """Log records at ``log_level`` and above, and every warning, appended to ``messages``
    while the block runs (see :func:`encode_named`)."""
    handler = _Collector(messages)
    handler.setLevel(log_level)
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(min(log_level, saved))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # the node's own filters decide on replay
            warnings.showwarning = partial(_warned, messages)
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def read_file(path: str) -> bytes:
    """The whole file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


def spool(data: bytes, directory: str) -> str:
    """Write ``data`` to a new file in ``directory`` and fsync it (durable content before
    the caller renames it into place and syncs that directory); return its path."""
    path = os.path.join(directory, f"{uuid.uuid4().hex}.part")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


@dataclass(frozen=True)
class Message:
    """One log record (``category`` None) or warning raised during a job."""

    logger: str
    level: int
    text: str
    filename: str
    lineno: int
    category: type[Warning] | None = None
    exc_text: str | None = None


class _Collector(logging.Handler):
    def __init__(self, messages: list[Message]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        exc_text = None
        if record.exc_info:
            exc_text = logging.Formatter().formatException(record.exc_info)
        self.messages.append(
            Message(
                record.name,
                record.levelno,
                record.getMessage(),
                record.pathname,
                record.lineno,
                exc_text=exc_text or record.exc_text,
            )
        )


def _warned(
    messages: list[Message],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    messages.append(Message("", logging.WARNING, str(message), filename, lineno, category))


def _encoded(encoded: Transcoded, new_uid: str = "", attributes: Any = None) -> Encoding:
    return Encoding(
        Outcome.ENCODED,
        data=encoded.data,
        transfer_syntax=encoded.transfer_syntax,
        codec=encoded.codec.name,
        size=len(encoded.data),
        sha256=hashlib.sha256(encoded.data).hexdigest(),
        new_uid=new_uid,
        attributes=attributes,
    )


def _lossless(data: bytes, codecs: Sequence[Codec], options: Mapping[str, Any]) -> Encoding:
    best: Transcoded | None = None
    errors: list[str] = []
    for codec in codecs:
        try:
            encoded = transcode(data, codec, dict(options))
        except NotCompressible as exc:
            return Encoding(Outcome.NOT_COMPRESSIBLE, f"not compressible: {exc}")
        except CodecUnavailable as exc:
            errors.append(f"{codec.name}: {exc}")
            continue
        except Exception as exc:
            errors.append(f"{codec.name}: {type(exc).__name__}: {exc}")
            continue
        if best is None or len(encoded.data) < len(best.data):
            best = encoded
    if best is None:
        return Encoding(Outcome.FAILED, "; ".join(errors)[:500])
    return _encoded(best)


def _lossy(data: bytes, codecs: Sequence[Codec], options: Mapping[str, Any]) -> Encoding:
    best: tuple[Transcoded, str] | None = None
    errors: list[str] = []
    for codec in codecs:
        try:
            candidate = derive(data, codec, dict(options))
        except DerivationRefused as exc:
            return Encoding(Outcome.REFUSED, str(exc))
        except NotCompressible as exc:
            return Encoding(Outcome.NOT_COMPRESSIBLE, f"not compressible: {exc}")
        except Exception as exc:
            errors.append(f"{codec.name}: {type(exc).__name__}: {exc}")
            continue
        if best is None or len(candidate[0].data) < len(best[0].data):
            best = candidate
    if best is None:
        return Encoding(Outcome.FAILED, "; ".join(errors)[:500])
    encoded, new_uid = best
    header = part10.read(encoded.data, pixels=False)
    return _encoded(encoded, new_uid, extract(header))
