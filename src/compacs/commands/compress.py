"""``compacs compress``: the compression policy (or its archive tier) applied to what is
already stored."""

from __future__ import annotations

import argparse
from dataclasses import replace

from compacs.admin.console import live
from compacs.commands import options
from compacs.config import Settings
from compacs.rules import When

NAME = "compress"
HELP = "apply the compression policy to everything already stored"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    options.verbose(parser)
    parser.add_argument("--dry-run", action="store_true", help="only say what would change")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: [compression] workers)",
    )
    parser.add_argument(
        "--retry",
        action="store_true",
        help="also retry instances that failed, were kept or skipped",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="apply the archive tier ([compression.archive]) now to everything stored, "
        "whatever its age; with --dry-run: the gain per modality and codec",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=5,
        help="--archive --dry-run: instances encoded per modality and codec (0: all)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 done, 1 no index, 3 some instances failed."""
    from compacs.admin.compress import compress_stored
    from compacs.index import open_index
    from compacs.index.compression_state import CompressionState
    from compacs.jobs.compress import Compressor
    from compacs.jobs.pool import WorkerProcesses
    from compacs.storage import open_store

    if not options.has_index(settings):
        return 1
    store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
    index = open_index(settings.resolved_index_url)
    encoder = None
    try:
        policy = settings.policy
        if policy.when is When.OFF:
            policy = replace(policy, when=When.DEFERRED)  # an explicit command overrides 'off'
        workers = max(1, args.workers or policy.workers)
        # the node's mechanism: the CPU part in worker processes, so that GIL-holding
        # codecs (pyjpegls, RLE) and the Python parts of each job use every core
        encoder = None if args.dry_run else WorkerProcesses(workers)
        compressor = Compressor(store, index, policy, encoder)
        with live(verbose=args.verbose):
            summary = compress_stored(
                compressor,
                index,
                policy,
                workers=workers,
                retry=args.retry,
                dry_run=args.dry_run,
                archive=args.archive,
                sample=args.sample,
            )
    finally:
        if encoder is not None:
            encoder.close(60)
        index.close()
    return 3 if summary.states[CompressionState.FAILED] else 0
