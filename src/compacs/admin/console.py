"""The terminal of an admin command while a progress bar is live: one writer for everything.

Without this, three writers share stderr with the bar: compacs' own log records, the log
records of the libraries it calls (pydicom logs a full traceback for every pixel decoder
plugin that fails, even when the next one succeeds) and Python ``warnings`` (pydicom warns
once per object, e.g. about padded pixel data). Inside :func:`live`:

- compacs' own records (``compacs.*``) print as one line each: level, message, the
  exception type and message instead of its traceback, and the SOP Instance UID the
  thread is working on (:func:`compacs.logs.about`); the bar line is cleared first and
  redrawn after;
- library records and warnings are counted per kind (the message with its numbers and
  quoted values masked) and summarised once, when the command ends;
- with ``verbose`` (``-v``) every record and warning also prints in full as it comes,
  tracebacks included (compacs has no log file: stderr is where the full text goes).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from compacs.logs import subject

_ACTIVE: Console | None = None  # the console of the command running now, see live()
_CLEAR = "\r\033[K"  # carriage return, erase to the end of the line (ECMA-48 EL)
_MASKS = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'...'"),
    (re.compile(r"\d+(\.\d+)*"), "N"),
)


def kind_of(text: str) -> str:
    """The kind of a message: its first line with quoted values and numbers masked, so
    that one message repeated per object (other sizes, other UIDs) is one kind."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    for pattern, mask in _MASKS:
        first = pattern.sub(mask, first)
    return first[:200]


def reasons(texts: list[str], width: int = 240) -> str:
    """``2x why; 1x other why``: ``texts`` grouped by kind, each shown by its first text."""
    groups: dict[str, list[str]] = {}
    for text in texts:
        groups.setdefault(kind_of(text), []).append(text)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return "; ".join(f"{len(g)}x {_shorten(g[0], width)}" for g in ordered)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def exception_line(
    exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
) -> str:
    """``Type: message`` of a record's exception, without the traceback."""
    _, exc, _ = exc_info
    return f"{type(exc).__name__}: {exc}" if exc is not None else ""


@dataclass
class Tally:
    """One kind of library message or warning: how often, and its first occurrence."""

    source: str
    first: str
    count: int = 0
    uid: str | None = None


class Console:
    """Serialises the bar, one-line messages and the tally of library messages."""

    def __init__(self, stream: TextIO = sys.stderr, verbose: bool = False) -> None:
        self.stream = stream
        self.verbose = verbose
        self.tty = stream.isatty()
        self.tallies: dict[str, Tally] = {}
        self._bar = ""  # the bar line on screen now (tty only)
        self._lock = threading.RLock()
        self._last = threading.local()  # the last text tallied by this thread

    # -- the bar ------------------------------------------------------------------------
    def draw(self, line: str, final: bool = False) -> None:
        """Show the progress ``line``: redrawn in place on a terminal, a plain line
        otherwise; ``final`` ends it (the next output starts on a new line)."""
        with self._lock:
            if self.tty:
                self.stream.write(_CLEAR + line + ("\n" if final else ""))
                self._bar = "" if final else line
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    # -- messages -----------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print ``text`` (one line, or several at -v) above the bar, then redraw it."""
        with self._lock:
            if self._bar:
                self.stream.write(_CLEAR)
            self.stream.write(text.rstrip("\n") + "\n")
            if self._bar:
                self.stream.write(self._bar)
            self.stream.flush()

    def tally(self, source: str, text: str, channel: str) -> None:
        """Count one library message or warning by kind. pydicom's ``warn_and_log`` both
        logs and warns every message: the same text right after itself on the same
        thread through the other channel is that same event, counted once."""
        last = getattr(self._last, "value", None)
        if last is not None and last[0] != channel and last[1] == text:
            self._last.value = None  # the pair is complete: the next one counts again
            return
        self._last.value = (channel, text)
        with self._lock:
            entry = self.tallies.setdefault(kind_of(text), Tally(source, text.strip()))
            entry.count += 1
            if entry.uid is None:
                entry.uid = subject()

    def summary(self) -> list[str]:
        """One line per kind of library message or warning, most frequent first."""
        if not self.tallies:
            return []
        total = sum(t.count for t in self.tallies.values())
        lines = [
            f"{total} library message(s) and warning(s) of {len(self.tallies)} kind(s)"
            + ("" if self.verbose else " (in full with -v)")
            + ":"
        ]
        for tally in sorted(self.tallies.values(), key=lambda t: -t.count):
            first = tally.first.splitlines()[0][:240]
            where = f" (first for {tally.uid})" if tally.uid else ""
            lines.append(f"  {tally.count}x {tally.source}: {first}{where}")
        return lines


class ConsoleHandler(logging.Handler):
    """Log records to a :class:`Console`: compacs' own as one line, the others tallied."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            uid = subject()
            if self.console.verbose:
                full = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
                self.console.line(full + (f" [{uid}]" if uid else ""))
            if not record.name.startswith("compacs"):
                self.console.tally(record.name, message, "log")
                return
            if self.console.verbose:
                return
            text = f"{record.levelname} {record.name}: {message}"
            if record.exc_info and (exc := exception_line(record.exc_info)) not in message:
                text += f": {exc}"
            if uid and uid not in text:
                text += f" [{uid}]"
            self.console.line(" ".join(text.split()))  # one line, whatever the message
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)


@contextmanager
def live(stream: TextIO = sys.stderr, verbose: bool = False) -> Iterator[Console]:
    """Route the root logger's records and all warnings through one :class:`Console`
    for the duration; print the tally of library messages and warnings at the end."""
    console = Console(stream, verbose)
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = ConsoleHandler(console)
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if verbose:
            console.line(warnings.formatwarning(message, category, filename, lineno, line))
        console.tally(category.__name__, text, "warning")

    global _ACTIVE
    root.handlers = [handler]
    previous, _ACTIVE = _ACTIVE, console
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # count every occurrence, not once per place
            warnings.showwarning = show
            yield console
    finally:
        _ACTIVE = previous
        root.handlers = saved
        for text in console.summary():
            console.line(text)


def active() -> Console | None:
    """The console of the running command, if one is live."""
    return _ACTIVE


class Progress:
    """A one-line progress bar on a terminal, plain lines otherwise. It draws through the
    live :class:`Console` when a command opened one, so that log records
    and warnings print above the bar instead of into it."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done = total, 0
        self.start = time.monotonic()
        self.console = active() or Console(stream)
        self.tty = self.console.tty
        self._last = 0.0

    def step(self, saved: int | None = None, note: str = "") -> None:
        """One more done; ``saved`` bytes (compress) or a short ``note`` (verify, reindex)."""
        self.done += 1
        now = time.monotonic()
        if not self.tty and now - self._last < 2 and self.done != self.total:
            return
        self._last = now
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(now - self.start, 1e-9)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.0f}/s"
        if saved is not None:
            line += f" saved {saved / 2**20:.1f} MiB"
        if note:
            line += f" {note}"
        self.console.draw(line, final=self.done == self.total)
