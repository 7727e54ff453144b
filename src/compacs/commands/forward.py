"""``compacs forward``: stored instances queued for a destination (the gateway's queue)."""

from __future__ import annotations

import argparse
import sys

from compacs.commands import options
from compacs.config import Settings
from compacs.index import Index, Selected

NAME = "forward"
HELP = "queue stored instances for a destination"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    options.selection(parser)
    parser.add_argument(
        "--to", required=True, metavar="AET", help="a configured peer, or AET@HOST:PORT"
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 queued, 1 nothing matched, 2 bad usage."""
    from compacs.admin import gateway
    from compacs.config import resolver
    from compacs.rules import RuleError

    def queue(index: Index, instances: list[Selected]) -> int:
        try:
            destination = resolver(settings.peers)(args.to)
        except RuleError as exc:
            print(f"compacs: --to: {exc}", file=sys.stderr)
            return 2
        n = gateway.forward(index, [i.pk for i in instances], destination)
        print(f"queued {n} instance(s) for {destination}")
        return 0

    return options.on_selection(settings, args, queue)
