"""Shared fixtures: real compacs processes on free 127.0.0.1 ports, and the servers the
scale-out tests share. What they are built from (NodeProcess & co.) is in tests/support/."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import NO_COMPRESSION, NodeProcess, write_config


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(name: str = "data", *, start: bool = True, **kwargs) -> NodeProcess:
        node = NodeProcess(tmp_path / name, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.stop(timeout=30)


@pytest.fixture
def restore_pynetdicom_config(monkeypatch) -> Iterator[None]:
    """A Node in the test's own process sets pynetdicom's and pydicom's configuration and
    the GIL switch interval process-wide: restored afterwards."""
    import pydicom.config
    from pynetdicom import _config as pynetdicom_config

    settings = pydicom.config.settings
    monkeypatch.setattr(settings, "reading_validation_mode", settings.reading_validation_mode)
    for name in (
        "LOG_HANDLER_LEVEL",
        "LOG_REQUEST_IDENTIFIERS",
        "LOG_RESPONSE_IDENTIFIERS",
        "STORE_SEND_CHUNKED_DATASET",
    ):
        monkeypatch.setattr(pynetdicom_config, name, getattr(pynetdicom_config, name))
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def node(node_factory) -> NodeProcess:
    return node_factory()


@pytest.fixture
def plain_node(node_factory, tmp_path) -> NodeProcess:
    """A node that stores what it receives as received (compression off)."""
    return node_factory(config=write_config(tmp_path / "plain.toml", NO_COMPRESSION))


# -- scale-out servers (tests/support/servers.py) ----------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session; ``postgres.database()`` -> a fresh URL."""
    from tests.support.servers import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 endpoint (SeaweedFS) for the session; ``s3.url()``."""
    from tests.support.servers import S3_CREDENTIALS, S3Server

    os.environ.update(S3_CREDENTIALS)  # the nodes started by the tests inherit them
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


CHROMIUM = "/usr/lib/chromium/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's chromium, headless, driven by Playwright (never `playwright install`)."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed: run the suite with `make test`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--headless=new",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()
