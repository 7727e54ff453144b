"""Failpoints for the durability tests: the node kills itself (SIGKILL, as kill -9 would)
at a named step, so that a test can show what start-up recovery makes of that moment.

``COMPACS_CRASH_AT=STEP`` (or ``STEP:N``, the N-th time the step is reached) in the
node's environment; unset in service, where :func:`crash_point` only compares a string.
"""

from __future__ import annotations

import os
import signal
import threading

_STEP, _, _NTH = os.environ.get("COMPACS_CRASH_AT", "").partition(":")
_remaining = int(_NTH or 1)
_lock = threading.Lock()


def crash_point(step: str) -> None:
    """Die here when the environment names this step (see the module docstring)."""
    global _remaining
    if step != _STEP:
        return
    with _lock:
        _remaining -= 1
        if _remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
