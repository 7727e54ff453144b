"""``compacs reindex``: the index rebuilt from the stored objects (disaster recovery)."""

from __future__ import annotations

import argparse
import sys

from compacs.admin.console import live
from compacs.commands import options
from compacs.config import Settings

NAME = "reindex"
HELP = "rebuild the index from the objects in the store (disaster recovery)"


def description() -> str:
    from compacs.admin.reindex import NOT_RECOVERED

    return (
        "Rebuild the index from the stored objects: attributes, storage key, "
        f"stored transfer syntax, size and SHA-256 come from each file. Not in the files: "
        f"{NOT_RECOVERED}. Stop the node first. Exit code 0 done, 1 some objects could not "
        "be indexed or are damaged, 2 refused or usage error."
    )


DESCRIPTION = description()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    options.verbose(parser)
    parser.add_argument(
        "--into",
        metavar="PATH|URL",
        help="build into this new SQLite file, or this empty PostgreSQL database, instead",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an index that has instances (the old one is kept as <name>.bak)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.admin.console import Progress
    from compacs.admin.reindex import ReindexError, print_report, rebuild
    from compacs.storage import open_store

    try:
        store = open_store(settings.resolved_store_url)
        with live(verbose=args.verbose):
            report = rebuild(
                store,
                settings.resolved_index_url,
                settings.ae_title,
                into=args.into,
                force=args.force,
                workers=options.workers(),
                progress=Progress,
            )
    except (ReindexError, ValueError) as exc:
        print(f"compacs reindex: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    return 0 if report.ok else 1
