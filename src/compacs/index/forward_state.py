"""The states of a forwarding queue item (``forwards.state``), one enum for the index, the
forwarders, the CLI and the pages."""

from __future__ import annotations

from enum import StrEnum


class ForwardState(StrEnum):
    PENDING = "pending"
    """Waiting to be sent (``not_before`` is the next attempt; with ``wait_compression``
    also until the instance's compression job is gone)."""
    SENDING = "sending"
    """Claimed by a forwarder."""
    COMMITTING = "committing"
    """Delivered, waiting for the Storage Commitment report (PS3.4 J.3.3)."""
    DONE = "done"
    """Delivered (and committed when asked)."""
    FAILED = "failed"
    """Parked after the last attempt, until ``compacs queue retry``."""


WAITING = (ForwardState.PENDING, ForwardState.SENDING, ForwardState.COMMITTING)
"""States of items not yet delivered."""
