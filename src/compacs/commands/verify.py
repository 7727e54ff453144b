"""``compacs verify``: every indexed object checked, orphans found."""

from __future__ import annotations

import argparse
import json
import sys

from compacs.admin.console import live
from compacs.commands import options
from compacs.config import Settings

NAME = "verify"
HELP = "check every indexed object (present, digest, parses, UID, pixels decode)"
DESCRIPTION = (
    "Check every indexed instance's object: present, size and SHA-256 as "
    "indexed, parses, SOP Instance UID as indexed, pixel data decodes; and report "
    "objects no index row references (orphans). Exit code 0 clean, 1 problems, 2 usage."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compacs.admin.verify import ORPHAN_MIN_AGE

    options.common(parser)
    options.verbose(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-decode", action="store_true", help="do not decode pixel data")
    parser.add_argument(
        "--repair-orphans",
        action="store_true",
        help=f"delete orphan objects older than {ORPHAN_MIN_AGE:.0f} s "
        "(never an object an index row references)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.admin.console import Progress
    from compacs.admin.verify import Verifier, print_report
    from compacs.index import open_index
    from compacs.storage import open_store
    from compacs.storage.owner import StoreOwned, claim

    if not options.has_index(settings):
        return 2
    store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
    index = open_index(settings.resolved_index_url)
    try:
        try:  # another index's objects would all look like orphans here
            claim(store, index.identity())
        except StoreOwned as exc:
            print(f"compacs verify: {exc}", file=sys.stderr)
            return 2
        verifier = Verifier(store, index, decode=not args.no_decode, workers=options.workers())
        with live(verbose=args.verbose):
            report = verifier.run(repair_orphans=args.repair_orphans, progress=Progress)
    finally:
        index.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report)
    return 0 if report.clean else 1
