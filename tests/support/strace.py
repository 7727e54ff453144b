"""strace on the node: what its threads asked of the kernel while a block of a test ran
(Debian package strace; `make test` installs it)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def traced(pids: Sequence[int], options: Sequence[str], out: Path) -> Iterator[Path]:
    """``strace -f OPTIONS`` on ``pids`` and their threads while the block runs, which
    starts once strace is attached; its log (or ``-c`` summary) is in ``out`` after it."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (Debian package strace)")
    attach = [arg for pid in pids for arg in ("-p", str(pid))]
    tracer = subprocess.Popen(
        ["strace", "-f", *options, "-o", str(out), *attach], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)  # attached to every thread
        yield out
    finally:
        tracer.send_signal(signal.SIGINT)  # detach; -c writes its summary
        tracer.wait(30)


def calls(summary: str, names: Sequence[str]) -> int:
    """How many calls of the system calls ``names`` an ``strace -c`` summary counts."""
    total = 0
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] in names:
            total += int(fields[3])
    return total
