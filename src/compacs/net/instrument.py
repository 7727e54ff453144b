"""Counts and durations of the query/retrieve services, for the metrics endpoint.

Each C-FIND, C-MOVE and C-GET handler is a generator that pynetdicom iterates until the
final response (PS3.7 9.1.2-9.1.4: pending responses, then one final status); the request
lasts from the first step to the generator's end, whether it ran out (``completed``), the
association ended under it (``stopped``) or it raised (``error``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import evt

from compacs import metrics
from compacs.net import Handler

SERVICES = {evt.EVT_C_FIND: "C-FIND", evt.EVT_C_MOVE: "C-MOVE", evt.EVT_C_GET: "C-GET"}


def timed(handlers: list[Handler]) -> list[Handler]:
    """``handlers`` with those of :data:`SERVICES` wrapped by :func:`_timed`."""
    return [
        (event, _timed(handler, SERVICES[event]) if event in SERVICES else handler)
        for event, handler in handlers
    ]


def _timed(handler: Callable[..., Iterator[Any]], service: str) -> Callable[..., Iterator[Any]]:
    @functools.wraps(handler)
    def wrapper(event: Any) -> Iterator[Any]:
        start = time.perf_counter()
        outcome = "stopped"
        try:
            yield from handler(event)
            outcome = "completed"
        except Exception:
            outcome = "error"
            raise
        finally:
            metrics.DIMSE_REQUESTS.inc(service=service, outcome=outcome)
            metrics.DIMSE_SECONDS.labels(service=service).observe(time.perf_counter() - start)

    return wrapper
