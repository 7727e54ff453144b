"""UID validation (PS3.5 section 9.1).

A UID is a string of numeric components separated by periods, at most 64 characters.
compacs uses validated UIDs to build storage keys, so the check is also what keeps a
hostile UID (``../``, ``/``, NUL bytes, over-long values) out of the file system.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64  # PS3.5 9.1

# PS3.5 9.1 also forbids leading zeros in a component ("0" itself is allowed). Real
# modalities break that rule often and the component stays path-safe, so compacs accepts
# leading zeros: refusing them would lose images, accepting them risks nothing.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class InvalidUID(ValueError):
    """A value that is not a UID by PS3.5 9.1; the message names the attribute."""


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a UID by PS3.5 9.1 (digits and dots, 1 to 64 characters)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID.fullmatch(value) is not None
    )


def require_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID or raise :class:`InvalidUID` naming ``keyword``."""
    if value is None or value == "":
        raise InvalidUID(f"{keyword} is missing (PS3.3: Type 1, required)")
    text = str(value)
    if not is_valid_uid(text):
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise InvalidUID(
            f"{keyword} {shown!r} is not a valid UID "
            f"(PS3.5 9.1: digits and dots, at most {MAX_UID_LENGTH} characters)"
        )
    return text
