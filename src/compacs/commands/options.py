"""Options and helpers several commands share."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from compacs.config import Settings
from compacs.dicom.ae import InvalidPeer, Peer
from compacs.index import Index, Selected


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


def on_selection(
    settings: Settings,
    args: argparse.Namespace,
    act: Callable[[Index, list[Selected]], int],
) -> int:
    """``act(index, instances)`` on the instances ``--patient``/``--study``/``--series``/
    ``--instance`` name, the index open meanwhile; or the exit code when there are none
    (1: no index or nothing matches, 2: no option given)."""
    from compacs.admin import gateway
    from compacs.index import open_index

    if not has_index(settings):
        return 1
    chosen = {o: getattr(args, o) for o in gateway.LEVEL_OPTIONS}
    if not any(chosen.values()):
        print("compacs: give --patient, --study, --series or --instance", file=sys.stderr)
        return 2
    index = open_index(settings.resolved_index_url)
    try:
        instances = gateway.selected(index, chosen)
        if not instances:
            print("compacs: no stored instance matches", file=sys.stderr)
            return 1
        return act(index, instances)
    finally:
        index.close()
