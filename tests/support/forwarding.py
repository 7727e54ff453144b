"""Watching a gateway forward: its durable forward queue as ``compacs queue list --json``
reports it, and waiting for a condition with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tests.support.node import NodeProcess

JLS = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless: what the default policy stores


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    """Poll ``condition`` every 0.1 s until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


def queue(node: NodeProcess, *args: str) -> list[dict]:
    """The node's forward queue items (``compacs queue list --json ARGS``)."""
    result = node.cli("queue", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
