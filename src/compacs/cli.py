"""The ``compacs`` command. Its sub-commands and options are a contract for scripts."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from compacs import __version__
from compacs.config import ConfigError, Peer, Settings, load, with_overrides
from compacs.console import live
from compacs.logs import configure


def _peer(text: str) -> Peer:
    try:
        return Peer.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` for the commands that draw a progress bar (see :mod:`compacs.console`)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every log record and warning in full as it comes, tracebacks included "
        "(default: one line per problem, library messages and warnings counted once per kind)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compacs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"compacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the node in the foreground")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="DICOM port (default 11112)")
    serve.add_argument("--aet", help="the node's AE title (default COMPACS)")
    serve.add_argument(
        "--http-port", type=int, help="web API and pages port (default 8042, 0: off)"
    )
    serve.add_argument(
        "--viewer-port",
        type=int,
        help="OHIF viewer port (default 8043, 0: off; served with the web server)",
    )
    serve.add_argument(
        "--peer",
        type=_peer,
        action="append",
        metavar="AET@HOST:PORT",
        help="register a remote AE (repeatable)",
    )
    serve.add_argument(
        "--forward",
        type=_peer,
        action="append",
        metavar="AET@HOST:PORT",
        help="forward everything received to this destination (repeatable)",
    )
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    compress = sub.add_parser(
        "compress", help="apply the compression policy to everything already stored"
    )
    _common(compress)
    _verbose(compress)
    compress.add_argument("--dry-run", action="store_true", help="only say what would change")
    compress.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: [compression] workers)",
    )
    compress.add_argument(
        "--retry",
        action="store_true",
        help="also retry instances that failed, were kept or skipped",
    )
    compress.add_argument(
        "--archive",
        action="store_true",
        help="apply the archive tier ([compression.archive]) now to everything stored, "
        "whatever its age; with --dry-run: the gain per modality and codec",
    )
    compress.add_argument(
        "--sample",
        type=int,
        default=5,
        help="--archive --dry-run: instances encoded per modality and codec (0: all)",
    )

    check = sub.add_parser(
        "check-config", help="validate the configuration (and TLS files, backend URLs)"
    )
    _common(check)

    stats = sub.add_parser("stats", help="counts and bytes stored")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")

    forward = sub.add_parser("forward", help="queue stored instances for a destination")
    _common(forward)
    _selection(forward)
    forward.add_argument(
        "--to", required=True, metavar="AET", help="a configured peer, or AET@HOST:PORT"
    )

    queue = sub.add_parser("queue", help="the forwarding queue: list, retry, drop")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = queue_sub.add_parser("list", help="queue items (default: not yet done)")
    _common(listing)
    listing.add_argument("--state", choices=["pending", "sending", "committing", "done", "failed"])
    listing.add_argument("--all", action="store_true", help="done items too")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for action, what in (("retry", "send again"), ("drop", "remove from the queue")):
        cmd = queue_sub.add_parser(action, help=f"{what}: the given items, or every failed one")
        _common(cmd)
        cmd.add_argument("ids", nargs="*", type=int, help="item ids (from queue list)")
        cmd.add_argument("--failed", action="store_true", help="every failed (parked) item")

    delete = sub.add_parser("delete", help="delete instances from the index and the store")
    _common(delete)
    _selection(delete)
    delete.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    delete.add_argument(
        "--yes", action="store_true", help="delete without asking (scripts; no terminal)"
    )
    _integrity_parsers(sub)
    return parser


def _selection(parser: argparse.ArgumentParser) -> None:
    for option in ("patient", "study", "series", "instance"):
        what = "Patient ID" if option == "patient" else f"{option} instance UID"
        parser.add_argument(
            f"--{option}",
            metavar="ID" if option == "patient" else "UID",
            help=f"everything under this {what}",
        )


def _integrity_parsers(sub: argparse._SubParsersAction) -> None:
    from compacs.integrity import ORPHAN_MIN_AGE
    from compacs.reindex import NOT_RECOVERED

    verify = sub.add_parser(
        "verify",
        help="check every indexed object (present, digest, parses, UID, pixels decode)",
        description="Check every indexed instance's object: present, size and SHA-256 as "
        "indexed, parses, SOP Instance UID as indexed, pixel data decodes; and report "
        "objects no index row references (orphans). Exit code 0 clean, 1 problems, 2 usage.",
    )
    _common(verify)
    _verbose(verify)
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--no-decode", action="store_true", help="do not decode pixel data")
    verify.add_argument(
        "--repair-orphans",
        action="store_true",
        help=f"delete orphan objects older than {ORPHAN_MIN_AGE:.0f} s "
        "(never an object an index row references)",
    )

    reindex = sub.add_parser(
        "reindex",
        help="rebuild the index from the objects in the store (disaster recovery)",
        description="Rebuild the index from the stored objects: attributes, storage key, "
        f"stored transfer syntax, size and SHA-256 come from each file. Not in the files: "
        f"{NOT_RECOVERED}. Stop the node first. Exit code 0 done, 1 some objects could not "
        "be indexed or are damaged, 2 refused or usage error.",
    )
    _common(reindex)
    _verbose(reindex)
    reindex.add_argument(
        "--into",
        metavar="PATH|URL",
        help="build into this new SQLite file, or this empty PostgreSQL database, instead",
    )
    reindex.add_argument(
        "--force",
        action="store_true",
        help="replace an index that has instances (the old one is kept as <name>.bak)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    settings = load(args.config)
    return with_overrides(
        settings,
        data_dir=args.data_dir,
        index_url=getattr(args, "index", None),
        store_url=getattr(args, "store", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        ae_title=getattr(args, "aet", None),
        log_level=getattr(args, "log_level", None),
        peers=getattr(args, "peer", None),
        forward=getattr(args, "forward", None),
        http_port=getattr(args, "http_port", None),
        viewer_port=getattr(args, "viewer_port", None),
    )


def cmd_check_config(settings: Settings, path: Path | None) -> int:
    """Exit 0 when the node would start with these settings, 2 with the reason."""
    from urllib.parse import urlsplit

    from compacs.index import BACKENDS as INDEXES
    from compacs.security import server_tls_context
    from compacs.storage import BACKENDS as STORES

    problems = []
    for what, url, known in (
        ("index", settings.resolved_index_url, INDEXES),
        ("storage", settings.resolved_store_url, STORES),
    ):
        if urlsplit(url).scheme not in known:
            problems.append(f"[{what}] url {url!r}: unknown scheme (known: {', '.join(known)})")
    if settings.tls_certificate and settings.tls_key:
        try:
            server_tls_context(settings.tls_certificate, settings.tls_key, settings.tls_client_ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            problems.append(f"[security] TLS certificate, key or CA unusable: {exc}")
    for problem in problems:
        print(f"compacs: {path or '(defaults)'}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(
        f"{path or '(defaults)'}: OK - AE {settings.ae_title} on {settings.host}:{settings.port}"
        f"{' (TLS)' if settings.tls_certificate else ''}, index {settings.resolved_index_url}, "
        f"store {settings.resolved_store_url}, {len(settings.policy.rules)} compression "
        f"rule(s), {len(settings.routing.routes)} forwarding rule(s), "
        f"{len(settings.access.rules) or 'no'} access rule(s), {len(settings.peers)} peer(s)"
    )
    return 0


def cmd_serve(settings: Settings) -> int:
    from compacs.node import Node, NodeRefused
    from compacs.web.server import WebRefused

    try:
        node = Node(settings)
    except (NodeRefused, WebRefused) as exc:
        print(f"compacs: {exc}", file=sys.stderr)
        return 2
    node.install_signal_handlers()
    node.serve_forever()
    return 0


def _has_index(settings: Settings) -> bool:
    """False, with a message, when the default SQLite index was never created."""
    if settings.index_url is None and not (settings.data_dir / "index.sqlite").exists():
        print(f"compacs: no index in {settings.data_dir} (nothing stored yet?)", file=sys.stderr)
        return False
    return True


def cmd_compress(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.index import open_index
    from compacs.jobs.compress import FAILED, Compressor
    from compacs.jobs.pool import WorkerProcesses
    from compacs.maintenance import compress_stored
    from compacs.storage import open_store

    if not _has_index(settings):
        return 1
    store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
    index = open_index(settings.resolved_index_url)
    encoder = None
    try:
        policy = settings.policy
        if policy.when == "off":
            from dataclasses import replace

            policy = replace(policy, when="deferred")  # an explicit command overrides 'off'
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
    return 3 if summary.states[FAILED] else 0


def cmd_stats(settings: Settings, as_json: bool) -> int:
    from compacs.index import open_index

    if not _has_index(settings):
        return 1
    index = open_index(settings.resolved_index_url)
    try:
        stats = index.stats()
    finally:
        index.close()
    if as_json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"patients {stats['patients']}  studies {stats['studies']}  series {stats['series']}  "
        f"instances {stats['instances']}  pending {stats['pending']}"
    )
    print(
        f"received {_size(stats['bytes_received'])}  stored {_size(stats['bytes_stored'])}  "
        f"ratio {stats['ratio']:.2f}"
    )
    print("compression: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["compression"].items())))
    untouched = stats.get("untouched_by_reason", {})
    if untouched:
        print("stored as received, by reason:")
        for reason, n in untouched.items():
            print(f"  {n:>8}  {reason}")
    for destination, entry in stats.get("forwarding", {}).items():
        states = ", ".join(f"{k} {v}" for k, v in sorted(entry.items()) if k != "bytes_sent")
        print(f"forwarding to {destination}: {states}; sent {_size(entry['bytes_sent'])}")
    for destination, entry in stats.get("forwarding_problems", {}).items():
        for e in entry["errors"]:
            print(
                f"  failing to {destination}: {e['items']} item(s), last attempt "
                f"{e['last_attempt']}: {e['error']}"
            )
    for title, key, label in (
        ("by modality", "by_modality", lambda k, v: k),
        ("by codec (stored transfer syntax)", "by_transfer_syntax", lambda k, v: v["name"]),
        ("by tier", "by_tier", lambda k, v: k),
    ):
        print(f"\n{title}:")
        print(f"  {'':<40} {'instances':>8}  {'received':>10}    {'stored':>10}  {'saved':>10}")
        for k, v in stats[key].items():
            print(
                f"  {label(k, v):<40} {v['instances']:>8}  {_size(v['bytes_received']):>10} -> "
                f"{_size(v['bytes_stored']):>10}  {_size(v['bytes_saved']):>10}  x{v['ratio']:.2f}"
            )
    return 0


def _quiet_pydicom() -> None:
    """Read stored files as the node does: no per-value validation warnings."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.index import open_index
    from compacs.integrity import Verifier, print_report
    from compacs.maintenance import Progress
    from compacs.storage import open_store

    if not _has_index(settings):
        return 2
    _quiet_pydicom()
    from compacs.storage.owner import StoreOwned, claim

    store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
    index = open_index(settings.resolved_index_url)
    try:
        try:  # another index's objects would all look like orphans here
            claim(store, index.identity())
        except StoreOwned as exc:
            print(f"compacs verify: {exc}", file=sys.stderr)
            return 2
        verifier = Verifier(store, index, decode=not args.no_decode, workers=_workers())
        with live(verbose=args.verbose):
            report = verifier.run(repair_orphans=args.repair_orphans, progress=Progress)
    finally:
        index.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report)
    return 0 if report.clean else 1


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from compacs.maintenance import Progress
    from compacs.reindex import ReindexError, print_report, rebuild
    from compacs.storage import open_store

    _quiet_pydicom()
    store_url = settings.resolved_store_url
    try:
        store = open_store(store_url)
        with live(verbose=args.verbose):
            report = rebuild(
                store,
                settings.resolved_index_url,
                settings.ae_title,
                into=args.into,
                force=args.force,
                workers=_workers(),
                progress=Progress,
            )
    except (ReindexError, ValueError) as exc:
        print(f"compacs reindex: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    return 0 if report.ok else 1


def _workers() -> int:
    import os

    return min(4, os.cpu_count() or 1)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"compacs: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format, settings.log_phi)
    if args.command == "serve":
        return cmd_serve(settings)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `compacs stats | head` ends quietly
    if args.command == "compress":
        return cmd_compress(settings, args)
    if args.command == "check-config":
        return cmd_check_config(settings, args.config)
    if args.command == "stats":
        return cmd_stats(settings, args.json)
    if args.command in ("forward", "queue", "delete"):
        return cmd_gateway(settings, args)
    if args.command == "verify":
        return cmd_verify(settings, args)
    if args.command == "reindex":
        return cmd_reindex(settings, args)
    raise AssertionError(args.command)


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    """``forward``, ``queue`` and ``delete``: exit 0 done, 1 nothing matched, 2 bad usage."""
    from compacs import gateway
    from compacs.config import resolver
    from compacs.index import open_index
    from compacs.rules import RuleError
    from compacs.storage import open_store

    if not _has_index(settings):
        return 1
    index = open_index(settings.resolved_index_url)
    try:
        if args.command == "queue":
            return _queue(index, args)
        chosen = {o: getattr(args, o) for o in gateway.LEVEL_OPTIONS}
        if not any(chosen.values()):
            print("compacs: give --patient, --study, --series or --instance", file=sys.stderr)
            return 2
        instances = gateway.selected(index, chosen)
        if not instances:
            print("compacs: no stored instance matches", file=sys.stderr)
            return 1
        if args.command == "forward":
            try:
                destination = resolver(settings.peers)(args.to)
            except RuleError as exc:
                print(f"compacs: --to: {exc}", file=sys.stderr)
                return 2
            n = gateway.forward(index, [i.pk for i in instances], destination)
            print(f"queued {n} instance(s) for {destination}")
            return 0
        what = gateway.describe(instances)
        if args.dry_run:
            print(f"would delete {what} (dry run: nothing deleted)")
            return 0
        if not args.yes and not _confirmed(f"delete {what}? This cannot be undone [y/N] "):
            return 2
        store = open_store(settings.resolved_store_url, settings.spool_dir, uploaders=0)
        try:
            n = gateway.delete(index, store, instances)
        finally:
            store.close()
        print(f"deleted {n} instance(s)")
        return 0
    finally:
        index.close()


def _confirmed(question: str) -> bool:
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


def _queue(index, args: argparse.Namespace) -> int:
    from compacs import gateway

    if args.queue_command == "list":
        items = index.forward_items(args.state, limit=100_000)
        if not args.state and not args.all:
            items = [i for i in items if i["state"] != "done"]
        if args.json:
            print(json.dumps(gateway.queue_document(items), indent=2))
        else:
            gateway.print_queue(items)
        return 0
    if not args.ids and not args.failed:
        print(f"compacs: queue {args.queue_command}: give item ids or --failed", file=sys.stderr)
        return 2
    pks = args.ids or None
    states = ("failed",) if args.failed else ("failed", "pending", "done")
    if args.queue_command == "retry":
        n = index.requeue_forwards(pks, states)
        print(f"{n} item(s) queued again")
    else:
        n = index.drop_forwards(pks, states)
        print(f"{n} item(s) dropped")
    return 0 if n else 1
