"""A real ``compacs serve`` process on a free 127.0.0.1 port, as an admin or a service
manager runs it, with its configuration file and its command line; and C-ECHO to it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

# Tests of the receive path keep what was sent byte for byte: compression off.
NO_COMPRESSION = '[compression]\nwhen = "off"\n'


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, text: str) -> Path:
    """``text`` written to ``path``, a node's TOML configuration: ``path``."""
    path.write_text(text)
    return path


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


class PortTaken(RuntimeError):
    """The node could not listen: its DICOM port was taken meanwhile."""


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
        self._started = False  # a restart keeps its port (peers know it)

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
        """Started and answering C-ECHO. free_port() only names a port that was free: when
        another process (the other pytest worker) takes it before this first start binds
        it, the node starts again on another one (at most three times)."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if self._started or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                error = (
                    PortTaken
                    if f"DICOM on 127.0.0.1:{self.port}: Address already" in text
                    else RuntimeError
                )
                raise error(f"compacs exited with {self.proc.returncode}:\n{text}")
            try:
                if echo(self.port, self.aet, timeout=2, tls=self.tls) == 0:
                    self._started = True
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


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``compacs ARGS`` in its own process from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "compacs", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
