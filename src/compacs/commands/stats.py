"""``compacs stats``: counts and bytes stored, by codec, modality and tier."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from compacs.commands import options
from compacs.config import Settings
from compacs.units import size

NAME = "stats"
HELP = "counts and bytes stored"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.index import open_index

    if not options.has_index(settings):
        return 1
    index = open_index(settings.resolved_index_url)
    try:
        stats = index.stats()
    finally:
        index.close()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats)
    return 0


def print_stats(stats: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """The document of ``Reports.stats`` for a terminal."""
    print(
        f"patients {stats['patients']}  studies {stats['studies']}  series {stats['series']}  "
        f"instances {stats['instances']}  pending {stats['pending']}",
        file=out,
    )
    print(
        f"received {size(stats['bytes_received'])}  stored {size(stats['bytes_stored'])}  "
        f"ratio {stats['ratio']:.2f}",
        file=out,
    )
    compression = ", ".join(f"{k} {v}" for k, v in sorted(stats["compression"].items()))
    print(f"compression: {compression}", file=out)
    untouched = stats.get("untouched_by_reason", {})
    if untouched:
        print("stored as received, by reason:", file=out)
        for reason, n in untouched.items():
            print(f"  {n:>8}  {reason}", file=out)
    for destination, entry in stats.get("forwarding", {}).items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(entry.items()) if k != "bytes_sent")
        print(f"forwarding to {destination}: {states}; sent {size(entry['bytes_sent'])}", file=out)
    for destination, entry in stats.get("forwarding_problems", {}).items():
        for e in entry["errors"]:
            print(
                f"  failing to {destination}: {e['items']} item(s), last attempt "
                f"{e['last_attempt']}: {e['error']}",
                file=out,
            )
    groups: tuple[tuple[str, str, Callable[[str, dict[str, Any]], str]], ...] = (
        ("by modality", "by_modality", lambda k, v: k),
        ("by codec (stored transfer syntax)", "by_transfer_syntax", lambda k, v: v["name"]),
        ("by tier", "by_tier", lambda k, v: k),
    )
    for title, key, label in groups:
        print(f"\n{title}:", file=out)
        print(
            f"  {'':<40} {'instances':>8}  {'received':>10}    {'stored':>10}  {'saved':>10}",
            file=out,
        )
        for k, v in stats[key].items():
            print(
                f"  {label(k, v):<40} {v['instances']:>8}  {size(v['bytes_received']):>10} -> "
                f"{size(v['bytes_stored']):>10}  {size(v['bytes_saved']):>10}  x{v['ratio']:.2f}",
                file=out,
            )
