"""Options and helpers several commands share."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compacs.config import Settings
from compacs.dicom.ae import InvalidPeer, Peer
from compacs.index import Catalogue, Selected


def peer(text: str) -> Peer:
    """``AET@HOST:PORT`` as an argparse type."""
    try:
        return Peer.parse(text)
    except InvalidPeer as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def common(parser: argparse.ArgumentParser) -> None:
    """Where the node's settings and data are: every command takes these."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    parser.add_argument(
        "--index",
        metavar="URL",
        help="index: sqlite:///path (default <data-dir>/index.sqlite) or postgresql://...",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="object store: file:///path (default <data-dir>/store) or "
        "s3://bucket/prefix?endpoint=http://host:port",
    )


def verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` for the commands that draw a progress bar (see :mod:`compacs.admin.console`)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every log record and warning in full as it comes, tracebacks included "
        "(default: one line per problem, library messages and warnings counted once per kind)",
    )


def selection(parser: argparse.ArgumentParser) -> None:
    """``--patient``/``--study``/``--series``/``--instance``: what a command acts on."""
    for option in ("patient", "study", "series", "instance"):
        what = "Patient ID" if option == "patient" else f"{option} instance UID"
        parser.add_argument(
            f"--{option}",
            metavar="ID" if option == "patient" else "UID",
            help=f"everything under this {what}",
        )


def has_index(settings: Settings) -> bool:
    """False, with a message, when the default SQLite index was never created."""
    if settings.index_url is None and not (settings.data_dir / "index.sqlite").exists():
        print(f"compacs: no index in {settings.data_dir} (nothing stored yet?)", file=sys.stderr)
        return False
    return True


def workers() -> int:
    """Threads for the commands that read every stored object (verify, reindex)."""
    return min(4, os.cpu_count() or 1)


def size(n: int) -> str:
    """Bytes for people: ``12.3 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def selected(index: Catalogue, args: argparse.Namespace) -> list[Selected] | int:
    """The instances ``--patient``/``--study``/``--series``/``--instance`` name, or the exit
    code when there are none (2: no option given, 1: nothing matches)."""
    from compacs.admin import gateway

    chosen = {o: getattr(args, o) for o in gateway.LEVEL_OPTIONS}
    if not any(chosen.values()):
        print("compacs: give --patient, --study, --series or --instance", file=sys.stderr)
        return 2
    instances = gateway.selected(index, chosen)
    if not instances:
        print("compacs: no stored instance matches", file=sys.stderr)
        return 1
    return instances
