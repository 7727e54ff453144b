"""Timestamps as compacs records them: UTC, ISO 8601 with an offset (``...+00:00``).

One source for every index row, ownership marker and activity entry, so that they compare
as text and read the same in the CLI, the web pages and the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds"]


def utc_now(timespec: Precision = "milliseconds") -> str:
    """Now, in UTC, as ISO 8601 text to ``timespec``."""
    return datetime.now(UTC).isoformat(timespec=timespec)
