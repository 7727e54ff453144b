"""Nodes sharing one index (PostgreSQL) and one store (S3) for the scale-out tests, and
waiting until the shared index has settled."""

from __future__ import annotations

import time

from compacs.index import open_index
from tests.support.node import NodeProcess, free_port, write_config

SPOOL_HOLD = "spool_hold_seconds = 2"
"""Any node may claim a compression job, also for an original another node holds in its
spool (storage/spool) until it compresses it or ``spool_hold_seconds`` (default 30) pass:
such a job, and a C-MOVE of that instance from another node, wait for the hold. The tests
hold 2 s: the same path, without 30 s waited out in each test."""


def node_on(
    tmp_path, name: str, index: str, store: str, *extra: str, storage: str = SPOOL_HOLD
) -> NodeProcess:
    """A node on the shared ``index`` and ``store``, with ``storage`` as its [storage]."""
    config = write_config(tmp_path / f"{name}-{free_port()}.toml", f"[storage]\n{storage}\n")
    extra_args = ("--index", index, "--store", store, "--config", str(config), *extra)
    return NodeProcess(tmp_path / name, extra_args=extra_args)


def wait_settled(index_url: str, count: int, timeout: float = 120, compressed: bool = True) -> dict:
    """The index's stats once ``count`` instances are in (and, with ``compressed``, none
    is waiting for compression), or when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    while True:
        index = open_index(index_url)
        try:
            stats = index.stats()
        finally:
            index.close()
        done = stats["instances"] >= count and (stats["pending"] == 0 or not compressed)
        if done or time.monotonic() > deadline:
            return stats
        time.sleep(0.3)
