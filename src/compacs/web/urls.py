"""Strict decoding of request URLs, shared by every route (the admin API and DICOMweb).

A path or query that is not valid percent-encoded UTF-8 (RFC 3986 2.1, 2.5) is refused,
never guessed at; each value is percent-decoded exactly once.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

MAX_QUERY_FIELDS = 100
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class BadUrl(ValueError):
    """A path or query that is not valid percent-encoded UTF-8."""


def decode_component(raw: bytes, what: str) -> str:
    """``raw`` (ASCII from h11) percent-decoded as UTF-8; :class:`BadUrl` naming ``what``."""
    text = raw.decode("ascii")
    if _BAD_PERCENT.search(text):
        raise BadUrl(f"the {what} has a '%' not followed by two hex digits (RFC 3986 2.1)")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise BadUrl(f"the {what} is not UTF-8 once percent-decoded (RFC 3986 2.5)") from None


def query_params(raw: bytes) -> list[tuple[str, str]]:
    """``a=1&b=2`` as pairs, strictly decoded, at most :data:`MAX_QUERY_FIELDS` fields."""
    text = raw.decode("ascii")
    if _BAD_PERCENT.search(text):
        raise BadUrl("the query has a '%' not followed by two hex digits (RFC 3986 2.1)")
    try:
        return parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except UnicodeDecodeError:
        raise BadUrl("the query is not UTF-8 once percent-decoded (RFC 3986 2.5)") from None
    except ValueError:
        raise BadUrl(f"the query has more than {MAX_QUERY_FIELDS} fields") from None
