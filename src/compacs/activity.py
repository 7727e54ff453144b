"""What the node did lately, for the admin's window: recent associations and errors.

Two in-memory ring buffers, fed by pynetdicom notification handlers bound next to the
DICOM services (the services themselves stay as they are) and by a logging handler that
keeps warnings and errors of compacs' own loggers. Nothing here is persisted: a restart
starts an empty history. No patient data is kept: AE titles, addresses, operations and
statuses only (compacs' log messages are PHI-free by default).

One event, one entry: a refused request is both a failure response (PS3.7 C.1.2: status
and Error Comment, sent to the calling AE) and the log line the service wrote while
refusing it. A log line written in an association's thread is therefore held until that
association's next response: a failure response absorbs it (the response says the same,
with status and calling AE); otherwise, and when the association ends, it is kept as an
error of its own. Log records carrying ``kept_in`` (``compacs.logs.IN_FORWARDING_QUEUE``)
report a problem whose state is kept elsewhere (the forwarding queue): not kept here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

from compacs.clock import utc_now
from compacs.dicom.status import Category, category
from compacs.net import Handler
from compacs.net.pdata import Summary

_OPERATIONS = {
    "C_ECHO_RQ": "C-ECHO",
    "C_STORE_RQ": "C-STORE",
    "C_FIND_RQ": "C-FIND",
    "C_MOVE_RQ": "C-MOVE",
    "C_GET_RQ": "C-GET",
    "N_ACTION_RQ": "N-ACTION",
    "N_EVENT_REPORT_RQ": "N-EVENT-REPORT",
}


AWAITING_CLOSE = "Sta13"
"""PS3.8 9.2 Sta13: this side sent A-RELEASE-RP, A-ABORT or A-ASSOCIATE-RJ and waits for
the transport to close."""


def is_failure(status: int) -> bool:
    """PS3.7 C.1.2: not success, warning, pending or cancel."""
    return category(status) is Category.FAILURE


class _Observer:
    """A handler of EVT_DIMSE_RECV/SENT that reads only a message's name, status and
    Error Comment: bound as a pynetdicom handler, and told a :class:`Summary` directly
    where compacs writes or reads a message without pydicom (net/pdata.py)."""

    def __init__(self, on_summary: Callable[[Any, Summary], None]) -> None:
        self.on_summary = on_summary

    def __call__(self, event: Event) -> None:
        message = event.message
        command = message.command_set
        self.on_summary(
            event.assoc,
            Summary(
                type(message).__name__,
                command.get("Status", None),
                command.get("ErrorComment", None),
            ),
        )


class Activity:
    """Ring buffers of the last ``size`` associations and errors (thread-safe)."""

    def __init__(self, size: int = 100) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, dict[str, Any]] = {}
        self._done: deque[dict[str, Any]] = deque(maxlen=size)
        self._errors: deque[dict[str, Any]] = deque(maxlen=size)
        self._size = size
        # association -> its log lines since its last response (at most ``size``)
        self._held: dict[int, deque[dict[str, Any]]] = {}
        # association -> its ended entry, "closed" until its own end event says how it
        # ended (see _closed; at most ``size``)
        self._closing: dict[int, dict[str, Any]] = {}

    # -- pynetdicom notification handlers --------------------------------------------
    def handlers(self) -> list[Handler]:
        return [
            (evt.EVT_ESTABLISHED, self._established),
            (evt.EVT_REJECTED, lambda e: self._ended(e, "rejected")),
            (evt.EVT_RELEASED, lambda e: self._ended(e, "released")),
            (evt.EVT_ABORTED, lambda e: self._ended(e, "aborted")),
            (evt.EVT_CONN_CLOSE, self._closed),
            (evt.EVT_DIMSE_RECV, _Observer(self._request)),
            (evt.EVT_DIMSE_SENT, _Observer(self._response)),
        ]

    def _entry(self, assoc: Any) -> dict[str, Any]:
        key = id(assoc)
        entry = self._open.get(key)
        if entry is None:
            requestor = assoc.requestor
            entry = {
                "started": utc_now("seconds"),
                "ended": None,
                "calling_ae": (requestor.ae_title or "").strip(),
                "address": str(requestor.address or ""),
                "operations": {},
                "failures": 0,
                "status": "open",
            }
            self._open[key] = entry
        return entry

    def _established(self, event: Event) -> None:
        with self._lock:
            self._entry(event.assoc)

    def _closed(self, event: Event) -> None:
        """EVT_CONN_CLOSE. In Sta13 the association ended by a PDU this side sent: its
        thread queues the A-RELEASE-RP (or A-ABORT) and then fires EVT_RELEASED (or
        EVT_ABORTED), and the DUL thread may send the PDU and see the peer close first
        (pynetdicom fires the two from different threads). The entry then ends as
        "closed" and takes the status of that later event."""
        dul = getattr(event.assoc, "dul", None)
        state = getattr(getattr(dul, "state_machine", None), "current_state", None)
        self._ended(event, "closed", provisional=state == AWAITING_CLOSE)

    def _ended(self, event: Event, status: str, provisional: bool = False) -> None:
        key = id(event.assoc)
        with self._lock:
            entry = self._open.pop(key, None)
            if entry is None:
                closing = self._closing.pop(key, None)
                if closing is not None:  # the association's thread says how it ended
                    closing["status"] = status
                    return
                if status != "rejected":
                    return  # closed after release/abort was already recorded
                entry = self._entry(event.assoc)
                self._open.pop(key)
            entry["ended"], entry["status"] = utc_now("seconds"), status
            self._done.append(entry)
            self._release(key, entry)
            if provisional:
                self._closing[key] = entry
                while len(self._closing) > self._size:
                    del self._closing[next(iter(self._closing))]

    def _request(self, assoc: Any, message: Summary) -> None:
        operation = _OPERATIONS.get(message.message)
        if operation is None:
            return
        with self._lock:
            entry = self._entry(assoc)
            entry["operations"][operation] = entry["operations"].get(operation, 0) + 1

    def _response(self, assoc: Any, message: Summary) -> None:
        name = message.message
        if not name.endswith("_RSP"):
            return
        status = int(message.status or 0)
        with self._lock:
            entry = self._entry(assoc)
            if not is_failure(status):
                self._release(id(assoc), entry)
                return
            self._held.pop(id(assoc), None)  # the response reports the same event
            entry["failures"] += 1
            self._errors.append(
                {
                    "time": utc_now("seconds"),
                    "source": "dimse",
                    "calling_ae": entry["calling_ae"],
                    "operation": name[:-4].replace("_", "-"),
                    "status": f"0x{status:04X}",
                    "message": str(message.error_comment or ""),
                }
            )

    def _release(self, key: int, entry: dict[str, Any]) -> None:
        """Keep an association's held log lines as errors of their own (lock held)."""
        for error in self._held.pop(key, ()):
            self._errors.append({**error, "calling_ae": entry["calling_ae"]})

    # -- logging ------------------------------------------------------------------------
    def log_handler(self) -> logging.Handler:
        """A handler keeping WARNING and above as recent errors."""
        activity = self

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if getattr(record, "kept_in", None):
                    return  # its state is shown from where it is kept
                try:
                    message = record.getMessage()
                except Exception:  # a bad format string must not break logging
                    message = str(record.msg)
                activity.add_log_line(record.levelname, message, record.name)

        handler = Keep(level=logging.WARNING)
        return handler

    def add_log_line(self, level: str, message: str, logger: str) -> None:
        """A warning or error logged by compacs: held when logged in the thread of an open
        association (see the module docstring), kept at once otherwise."""
        error = {"time": utc_now("seconds"), "source": "log", "status": level, "message": message}
        error["logger"] = logger
        with self._lock:
            key = id(threading.current_thread())
            if key in self._open:
                self._held.setdefault(key, deque(maxlen=self._size)).append(error)
            else:
                self._errors.append(error)

    def add_error(self, source: str, status: str, message: str, **extra: str) -> None:
        with self._lock:
            self._errors.append(
                {
                    "time": utc_now("seconds"),
                    "source": source,
                    "status": status,
                    "message": message,
                    **extra,
                }
            )

    # -- reading ------------------------------------------------------------------------
    def associations(self, limit: int = 50) -> list[dict[str, Any]]:
        """Open associations, then the most recently ended, newest first."""
        with self._lock:
            current = [dict(e, operations=dict(e["operations"])) for e in self._open.values()]
            done = [dict(e, operations=dict(e["operations"])) for e in reversed(self._done)]
        return (current[::-1] + done)[:limit]

    def errors(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._errors))[:limit]
