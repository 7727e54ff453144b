"""The ``compacs`` command. Its sub-commands and options are a contract for scripts.

A table of contents: each sub-command is a module of :mod:`compacs.commands` (its name,
help, ``add_arguments`` and ``run``), listed in :data:`COMMANDS` in the order ``--help``
shows them.
"""

from __future__ import annotations

import argparse
import signal
import sys

from compacs import __version__, libraries
from compacs.commands import (
    Command,
    check_config,
    compress,
    delete,
    forward,
    queue,
    reindex,
    serve,
    stats,
    verify,
)
from compacs.config import ConfigError, Settings, load, with_overrides
from compacs.logs import configure

COMMANDS: tuple[Command, ...] = (
    serve,
    compress,
    check_config,
    stats,
    forward,
    queue,
    delete,
    verify,
    reindex,
)
BY_NAME = {command.NAME: command for command in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compacs", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"compacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(
            sub.add_parser(
                command.NAME,
                help=command.HELP,
                description=getattr(command, "DESCRIPTION", None),
            )
        )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The configuration file's settings with the command line's values over them."""
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"compacs: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format, settings.log_phi)
    libraries.configure(settings.log_phi and settings.log_level == "DEBUG")
    if args.command != serve.NAME:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `compacs stats | head` ends quietly
    return BY_NAME[args.command].run(settings, args)
