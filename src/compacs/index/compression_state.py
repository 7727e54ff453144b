"""An instance's compression state, and why it is stored as received (a reason).

States (``instances.compression``): empty until the compressor or ``compacs compress`` has
looked at it (a note may already say why the policy keeps it as received), then
``compressed``, ``kept`` (an encoding was not smaller, or it is already in a target
syntax), ``skipped`` (the policy or the pixel module keeps it), ``failed`` (original kept),
``derived`` (a lossy derivative was stored as a new instance).

The compressor (``compacs.jobs.compress``) and the policy (``compacs.rules.Policy.verdict``)
write a note per instance; a note may carry numbers of that one instance ("htj2k gave
202108 bytes, not smaller"). Its reason is the note without them, so that instances can be
counted by reason (``compacs stats``, the API's ``untouched_by_reason``).
"""

from __future__ import annotations

from enum import StrEnum


class CompressionState(StrEnum):
    """``instances.compression`` once the compressor has looked at an instance."""

    COMPRESSED = "compressed"
    KEPT = "kept"
    """An encoding was not smaller, or the object is already in a target syntax."""
    SKIPPED = "skipped"
    """The policy or the pixel module keeps it as received."""
    FAILED = "failed"
    """Every codec failed; the original is kept."""
    DERIVED = "derived"
    """A lossy derivative was stored as a new instance."""


CHANGED = (CompressionState.COMPRESSED, CompressionState.DERIVED)
"""States of instances whose stored object is not the one received (or has a derivative)."""

_NOT_SMALLER = "bytes, not smaller"  # the end of "<codec> gave N bytes, not smaller"
_SMALLEST = "stored syntax stays the smallest"
_NOT_COMPRESSIBLE = "not compressible: "


# Notes that carry one instance's numbers, grouped by SQL before they are counted, so that
# counting by reason reads one row per kind of note, not one per instance.
_NOTE_KINDS_SQL = (
    f"CASE WHEN {{note}} LIKE '{_SMALLEST}%' THEN '{_SMALLEST}' "
    f"WHEN {{note}} LIKE '%{_NOT_SMALLER}' THEN 'not smaller' ELSE {{note}} END"
)


def note_kind_sql(column: str) -> str:
    """An SQL expression of ``column`` (a compression note) with the per-instance numbers
    of the common notes left out; :func:`reason_of` gives the same reason for both."""
    return _NOTE_KINDS_SQL.format(note=column)


def reason_of(state: str | None, note: str | None) -> str:
    """The reason an instance in compression ``state`` with ``note`` is left as received."""
    if not note:
        return state or "no compression recorded"
    if note.startswith(_SMALLEST):
        return _SMALLEST
    if note.endswith(_NOT_SMALLER):
        return "not smaller"
    if note.startswith(_NOT_COMPRESSIBLE):  # the pixel module's fact, not its details
        fact = note[len(_NOT_COMPRESSIBLE) :].split(" (")[0].split(": ")[0]
        return _NOT_COMPRESSIBLE + fact
    if (
        state == CompressionState.FAILED
    ):  # "jpeg-ls: ValueError: ..." -> the codec or the error type
        return f"failed: {note.split(':')[0]}"
    return note
