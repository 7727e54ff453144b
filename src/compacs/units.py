"""Quantities as people read them: one formatting for the CLI and the web pages."""

from __future__ import annotations


def size(n: float) -> str:
    """Bytes with a binary unit: ``512 B``, ``12.3 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
