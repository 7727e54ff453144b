"""A process and its descendants, read from /proc (Linux): who they are, their CPU time and
their proportional memory (PSS, so that pages shared after a fork count once)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): field 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    below = children(pid)
    return below + [d for child in below for d in descendants(child)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` itself (utime + stime, proc(5))."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (/proc/PID/smaps_rollup), KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS in /proc/PID/status), KiB."""
    return _status_kib(pid, "VmRSS:")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` since start or :func:`reset_peak_rss` (VmHWM), KiB."""
    return _status_kib(pid, "VmHWM:")


def reset_peak_rss(pid: int) -> None:
    """Restart ``pid``'s peak RSS count from its current RSS (proc(5): clear_refs ``5``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def read_chars(pid: int) -> int:
    """Bytes ``pid`` has read through read(2) and the like so far, files and sockets
    (rchar in /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0
