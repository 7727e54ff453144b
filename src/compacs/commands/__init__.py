"""The ``compacs`` sub-commands, one module each: ``NAME``, ``HELP`` (and optionally
``DESCRIPTION``), ``add_arguments(parser)`` and ``run(settings, args) -> exit code``.
``compacs.cli`` lists them and dispatches; the work itself is in ``compacs.admin`` (and
``compacs.node`` for ``serve``), which return reports the command prints."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from compacs.config import Settings


class Command(Protocol):
    """What ``compacs.cli`` needs of a command module (a module satisfies a protocol)."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, settings: Settings, args: argparse.Namespace) -> int: ...
