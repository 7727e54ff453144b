"""Shared fixtures: real compacs processes on free 127.0.0.1 ports, and DICOM clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_env() -> dict[str, str]:
    """DCMTK tools stall ~40 ms per message on Nagle's algorithm without TCP_NODELAY."""
    return {**os.environ, "TCP_NODELAY": "1"}


def require_dcmtk() -> None:
    if shutil.which("storescu") is None:
        pytest.fail("DCMTK is not installed: run the suite with `make test`, which installs it")


def web_node(folder: Path, config_text: str, token: str) -> tuple[NodeProcess, int]:
    """A node (not started) in ``folder`` serving its web pages and DICOMweb on a free port
    behind ``token``, with ``config_text`` added to its configuration; and that port."""
    http_port = free_port()
    http = f'[http]\nport = {http_port}\ntoken = "{token}"\n'
    config = write_config(folder / "node.toml", http + config_text)
    node = NodeProcess(folder / "data", config=config, extra_args=("--http-port", str(http_port)))
    return node, http_port


def echo(port: int, aet: str = "COMPACS", timeout: float = 5, tls: Any = None) -> int | None:
    """C-ECHO status from the node at ``port``, or None when no association was made;
    ``tls``: an ssl.SSLContext for a node that speaks DICOM over TLS."""
    ae = AE(ae_title="ECHOSCU")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(Verification)
    kwargs = {"tls_args": (tls, "127.0.0.1")} if tls is not None else {}
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, **kwargs)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


class NodeProcess:
    """``compacs serve`` in its own process, as an admin or a service manager runs it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        aet: str = "COMPACS",
        config: Path | None = None,
        extra_args: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
        tls: Any = None,
    ) -> None:
        self.data_dir = data_dir
        self.aet = aet
        self.port = free_port()
        self.config = config
        self.extra_args = extra_args
        self.wrapper = wrapper
        self.tls = tls  # the client ssl.SSLContext the readiness probe uses
        self.log_path = data_dir.parent / f"{data_dir.name}-serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        cmd = [*self.wrapper, sys.executable, "-m", "compacs", "serve"]
        cmd += ["--data-dir", str(self.data_dir), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--aet", self.aet]
        if self.config:
            cmd += ["--config", str(self.config)]
        if "--http-port" not in self.extra_args:  # nodes run side by side: no shared 8042
            cmd += ["--http-port", "0"]
        if "--viewer-port" not in self.extra_args:  # nor a shared 8043
            cmd += ["--viewer-port", "0"]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 30) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"compacs exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if echo(self.port, self.aet, timeout=2, tls=self.tls) == 0:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"compacs did not answer C-ECHO within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir))

    def stats(self) -> dict:
        result = self.cli("stats", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


POLLING_LAUNCHER = (
    "import runpy, sys\n"
    "import compacs.net.event_reactor as reactor\n"
    "reactor.make_event_driven = lambda assoc: assoc\n"
    "sys.argv = ['compacs', *sys.argv[1:]]\n"
    "runpy.run_module('compacs', run_name='__main__')\n"
)


class PollingNode(NodeProcess):
    """``compacs serve`` with pynetdicom's own polling reactors (net/event_reactor.py
    switched off in its process): the reference the event-driven node is measured against."""

    @property
    def command(self) -> list[str]:
        cmd = super().command
        at = cmd.index("-m")
        return [*cmd[:at], "-c", POLLING_LAUNCHER, *cmd[at + 2 :]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compacs", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


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


# Tests of the receive path keep what was sent byte for byte: compression off.
NO_COMPRESSION = '[compression]\nwhen = "off"\n'


@pytest.fixture
def plain_node(node_factory, tmp_path) -> NodeProcess:
    """A node that stores what it receives as received (compression off)."""
    return node_factory(config=write_config(tmp_path / "plain.toml", NO_COMPRESSION))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- scale-out servers (tests/servers.py) ------------------------------------------------
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
