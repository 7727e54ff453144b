"""What every DICOMweb endpoint reads: the node's index and store (through the web
:class:`compacs.web.api.App`), always in the web server's bounded pool of handler threads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from compacs.index import StoredInstance
from compacs.web.api import App
from compacs.web.dicomweb import wado

Runner = Callable[..., Awaitable[Any]]
"""Runs a synchronous handler in the web server's bounded thread pool."""


class Resource:
    """An endpoint's access to what is stored: ``run`` puts work in the thread pool."""

    def __init__(self, app: App, run: Runner) -> None:
        self.app, self.run = app, run

    def stored(self, inst: StoredInstance) -> bytes:
        """The stored object of ``inst`` (call it in the pool)."""
        return self.app.store.get(inst["storage_key"])

    async def select(self, *uids: str | None) -> list[StoredInstance]:
        """The instances the path's study/series/instance UIDs name; 404 when none."""
        study, series, instance = uids
        assert study is not None
        found: list[StoredInstance] = await self.run(
            wado.select, self.app.index, study, series, instance
        )
        return found
