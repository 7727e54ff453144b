"""The index: what is stored, where, and the attributes queries need.

Backends are chosen by the scheme of an index URL, from :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from compacs.index.base import (
    AddResult,
    Duplicates,
    Index,
    IndexUnavailable,
    InstanceFacts,
    InstanceLocation,
    NewInstance,
    ObjectChange,
)
from compacs.index.sqlite import SqliteIndex

BACKENDS: dict[str, Callable[[str], Index]] = {
    "sqlite": SqliteIndex.from_url,
}


def open_index(url: str) -> Index:
    """Open the index named by ``url`` (``sqlite:///abs/path.sqlite``)."""
    scheme = urlsplit(url).scheme
    try:
        factory = BACKENDS[scheme]
    except KeyError:
        raise ValueError(
            f"index URL {url!r}: unknown scheme {scheme!r} (known: {', '.join(BACKENDS)})"
        ) from None
    return factory(url)


__all__ = [
    "BACKENDS",
    "AddResult",
    "Duplicates",
    "Index",
    "IndexUnavailable",
    "InstanceFacts",
    "InstanceLocation",
    "NewInstance",
    "ObjectChange",
    "open_index",
]
