"""The CPU part of one compression job: the stored object's bytes in, the verified encoding
(or the reason there is none) out.

This is what a compression worker process runs (:mod:`compacs.jobs.pool`): it needs no
index and no store, only the codecs layer, and it takes and returns plain picklable values
(bytes, codec names, options; an :class:`Encoding`). Everything that holds the GIL in a
job -- parsing, frame extraction, encode, decode-and-compare (PS3.5 8.2: lossless means
bit-exact, see :mod:`compacs.codecs.transcode`), encapsulation, the hash of the result --
happens here, so the node process keeps its core for receiving.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from io import BytesIO
from typing import Any

from pydicom import dcmread

from compacs.codecs.convert import data_set_for
from compacs.codecs.lossy import DerivationRefused, derive
from compacs.codecs.pixels import NotCompressible
from compacs.codecs.table import Codec, CodecUnavailable, codec_for
from compacs.codecs.transcode import Transcoded, transcode
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
    """The new Part 10 file (``outcome`` ENCODED)."""
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
    data: bytes,
    codecs: Sequence[str],
    options: Mapping[str, Any],
    lossy: bool,
    log_level: int = logging.WARNING,
) -> Encoding:
    """:func:`encode_best` with the codecs named (``codecs.table`` names): the entry point
    of a worker process, which looks the codecs up in its own table. The libraries' log
    records (at ``log_level`` and above) and warnings travel back with the result, in the
    order they came, for the node to emit as its own (one job at a time runs in a worker
    process, so what is caught here is this job's)."""
    messages: list[Message] = []
    with _caught(messages, log_level):
        result = encode_best(data, tuple(codec_for(name) for name in codecs), options, lossy)
    return replace(result, messages=tuple(messages)) if messages else result


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
    header = dcmread(BytesIO(encoded.data), stop_before_pixels=True)
    return _encoded(encoded, new_uid, extract(header))
