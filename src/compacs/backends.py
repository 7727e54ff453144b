"""Backends chosen by the scheme of a URL: one lookup for the index and the store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def open_by_scheme(url: str, backends: Mapping[str, Callable[[str], T]], what: str) -> T:
    """``backends[scheme](url)``; a ValueError naming ``what`` and the known schemes."""
    scheme = urlsplit(url).scheme
    try:
        factory = backends[scheme]
    except KeyError:
        known = ", ".join(backends)
        raise ValueError(
            f"{what} URL {url!r}: unknown scheme {scheme!r} (known: {known})"
        ) from None
    return factory(url)
