"""``compacs serve``: run the node in the foreground."""

from __future__ import annotations

import argparse
import sys

from compacs.commands import options
from compacs.config import Settings

NAME = "serve"
HELP = "run the node in the foreground"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="DICOM port (default 11112)")
    parser.add_argument("--aet", help="the node's AE title (default COMPACS)")
    parser.add_argument(
        "--http-port", type=int, help="web API and pages port (default 8042, 0: off)"
    )
    parser.add_argument(
        "--viewer-port",
        type=int,
        help="OHIF viewer port (default 8043, 0: off; served with the web server)",
    )
    parser.add_argument(
        "--peer",
        type=options.peer,
        action="append",
        metavar="AET@HOST:PORT",
        help="register a remote AE (repeatable)",
    )
    parser.add_argument(
        "--forward",
        type=options.peer,
        action="append",
        metavar="AET@HOST:PORT",
        help="forward everything received to this destination (repeatable)",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(settings: Settings, args: argparse.Namespace) -> int:
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
