"""``compacs queue list|retry|drop``: the forwarding queue."""

from __future__ import annotations

import argparse
import json
import sys

from compacs.commands import options
from compacs.config import Settings
from compacs.index.forward_state import ForwardState

NAME = "queue"
HELP = "the forwarding queue: list, retry, drop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="queue items (default: not yet done)")
    options.common(listing)
    listing.add_argument("--state", choices=[state.value for state in ForwardState])
    listing.add_argument("--all", action="store_true", help="done items too")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for action, what in (("retry", "send again"), ("drop", "remove from the queue")):
        cmd = actions.add_parser(action, help=f"{what}: the given items, or every failed one")
        options.common(cmd)
        cmd.add_argument("ids", nargs="*", type=int, help="item ids (from queue list)")
        cmd.add_argument("--failed", action="store_true", help="every failed (parked) item")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 done, 1 no index or no item changed, 2 bad usage."""
    from compacs.admin import gateway
    from compacs.index import open_index

    if not options.has_index(settings):
        return 1
    index = open_index(settings.resolved_index_url)
    try:
        if args.queue_command == "list":
            items = index.forward_items(args.state, limit=100_000)
            if not args.state and not args.all:
                items = [i for i in items if i["state"] != ForwardState.DONE]
            if args.json:
                print(json.dumps(gateway.queue_document(items), indent=2))
            else:
                gateway.print_queue(items)
            return 0
        if not args.ids and not args.failed:
            print(
                f"compacs: queue {args.queue_command}: give item ids or --failed", file=sys.stderr
            )
            return 2
        pks = args.ids or None
        states: tuple[str, ...] = (
            (ForwardState.FAILED,)
            if args.failed
            else (ForwardState.FAILED, ForwardState.PENDING, ForwardState.DONE)
        )
        if args.queue_command == "retry":
            n = index.requeue_forwards(pks, states)
            print(f"{n} item(s) queued again")
        else:
            n = index.drop_forwards(pks, states)
            print(f"{n} item(s) dropped")
        return 0 if n else 1
    finally:
        index.close()
