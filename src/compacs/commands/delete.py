"""``compacs delete``: instances removed from the index and the store."""

from __future__ import annotations

import argparse
import sys

from compacs.commands import options
from compacs.config import Settings
from compacs.index import Index, Selected

NAME = "delete"
HELP = "delete instances from the index and the store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    options.selection(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    parser.add_argument(
        "--yes", action="store_true", help="delete without asking (scripts; no terminal)"
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 done, 1 nothing matched, 2 bad usage or not confirmed."""
    from compacs.admin import gateway
    from compacs.storage import open_store

    def delete(index: Index, instances: list[Selected]) -> int:
        what = gateway.describe(instances)
        if args.dry_run:
            print(f"would delete {what} (dry run: nothing deleted)")
            return 0
        if not args.yes and not confirmed(f"delete {what}? This cannot be undone [y/N] "):
            return 2
        store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
        try:
            n = gateway.delete(index, store, instances)
        finally:
            store.close()
        print(f"deleted {n} instance(s)")
        return 0

    return options.on_selection(settings, args, delete)


def confirmed(question: str) -> bool:
    """The admin's yes on a terminal; without one (a script), --yes is required."""
    if not sys.stdin.isatty():
        print(
            "compacs: delete asks for confirmation and there is no terminal: give --yes "
            "(or --dry-run to see what would be deleted)",
            file=sys.stderr,
        )
        return False
    answer = input(question).strip().lower()
    if answer not in ("y", "yes"):
        print("compacs: nothing deleted", file=sys.stderr)
        return False
    return True
