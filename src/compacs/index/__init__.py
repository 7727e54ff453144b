"""The index: what is stored, where, and the attributes queries need.

Backends are chosen by the scheme of an index URL, from :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable

from compacs.backends import open_by_scheme
from compacs.index.base import (
    AddResult,
    Catalogue,
    CompressionQueue,
    Duplicates,
    Forward,
    ForwardItem,
    ForwardOutcome,
    ForwardQueue,
    Index,
    IndexUnavailable,
    InstanceFacts,
    InstanceLocation,
    Loader,
    NewInstance,
    ObjectChange,
    Reports,
    Selected,
    StoredInstance,
)
from compacs.index.postgres import PostgresIndex
from compacs.index.sqlite import SqliteIndex

BACKENDS: dict[str, Callable[[str], Index]] = {
    "sqlite": SqliteIndex.from_url,
    "postgresql": PostgresIndex.from_url,
    "postgres": PostgresIndex.from_url,
}


def open_index(url: str) -> Index:
    """Open the index named by ``url`` (``sqlite:///abs/path.sqlite``,
    ``postgresql://user@host:port/database``)."""
    return open_by_scheme(url, BACKENDS, "index")


__all__ = [
    "BACKENDS",
    "AddResult",
    "Catalogue",
    "CompressionQueue",
    "Duplicates",
    "Forward",
    "ForwardItem",
    "ForwardOutcome",
    "ForwardQueue",
    "Index",
    "IndexUnavailable",
    "InstanceFacts",
    "InstanceLocation",
    "Loader",
    "NewInstance",
    "ObjectChange",
    "Reports",
    "Selected",
    "StoredInstance",
    "open_index",
]
