"""Logging set-up: plain lines or JSON lines (one object per record) on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SUBJECT: ContextVar[str | None] = ContextVar("compacs_subject", default=None)


@contextmanager
def about(sop_instance_uid: str) -> Iterator[None]:
    """While the calling thread works on this instance, its log records and warnings can
    name it (:func:`subject`), whichever library emitted them. UIDs only, never names."""
    token = _SUBJECT.set(sop_instance_uid)
    try:
        yield
    finally:
        _SUBJECT.reset(token)


def subject() -> str | None:
    """The SOP Instance UID the calling thread is working on, if it said (:func:`about`)."""
    return _SUBJECT.get()


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"[, "exception"]}`` per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text", log_phi: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # pynetdicom logs data sets (names, IDs) from INFO on: only when the admin allows it
    verbose = level == "DEBUG" and log_phi
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)


IN_FORWARDING_QUEUE = {"kept_in": "forwarding queue"}
"""``extra`` of a log record reporting a problem the forwarding queue keeps as its items'
state (``last_error``, cleared when they are delivered): the admin's window shows it from
the queue, so that it goes when the problem does (compacs.activity keeps no copy)."""
