"""The servers the benchmark compares, run on 127.0.0.1: compacs and DCMTK storescp.
(Orthanc is driven by tests/support/orthanc.py.) Every DCMTK process gets TCP_NODELAY=1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.procfs import descendants, pss_kib

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_ok(aet: str, port: int) -> bool:
    return (
        subprocess.run(
            ["echoscu", "-aec", aet, "127.0.0.1", str(port)], env=ENV, capture_output=True
        ).returncode
        == 0
    )


def send_folder(aet: str, port: int, folder: Path) -> None:
    """Every file of ``folder`` sent by DCMTK storescu on one association; must succeed."""
    subprocess.run(
        ["storescu", "-aec", aet, "127.0.0.1", str(port), "+sd", str(folder)],
        env=ENV,
        check=True,
        capture_output=True,
    )


def wait_for_echo(aet: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not echo_ok(aet, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{aet} on {port} did not answer C-ECHO")
        time.sleep(0.1)


def _own_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _alive(pids: list[int], read: Callable[[int], float]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            total += read(pid)
    return total


def cpu_seconds(pid: int) -> float:
    """CPU of a server and every live process below it (compacs's compression worker
    processes live as long as the node, so their CPU is not yet in the node's cutime)."""
    return _own_cpu_seconds(pid) + _alive(descendants(pid), _own_cpu_seconds)


def _own_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a server and its live descendants, added up (an upper
    bound: pages a worker shares with the process it was forked from count twice)."""
    return _own_peak_rss_mb(pid) + _alive(descendants(pid), _own_peak_rss_mb)


def pss_mb(pid: int) -> float:
    """Proportional memory of a server and its live descendants, added up (pages shared
    after a fork count once, /proc/PID/smaps_rollup)."""
    return _alive([pid, *descendants(pid)], pss_kib) / 1024


class PeakSampler:
    """Samples a sum over a server's processes every ``period`` seconds while running:
    ``with PeakSampler(lambda: pss_mb(pid)) as s: ...; s.peak``; with ``read`` None it
    samples nothing (peak 0)."""

    def __init__(self, read: Callable[[], float] | None, period: float = 0.05) -> None:
        self.read, self.period, self.peak = read, period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.read())
            self._stop.wait(self.period)

    def __enter__(self) -> PeakSampler:
        if self.read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Compacs:
    name = "compacs"

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "COMPACS",
        config: str = "",
        peers: tuple[str, ...] = (),
        backends: tuple[str, ...] = (),
        http_port: int = 0,
    ) -> None:
        """``backends``: ``--index URL --store URL`` (default: SQLite + filesystem);
        ``http_port``: the web server's (0: off)."""
        self.workdir, self.aet, self.port = workdir, aet, free_port()
        self.http_port = http_port
        self.data = workdir / "data"
        self.config_text, self.peers, self.backends = config, peers, backends
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "compacs",
            "serve",
            "--data-dir",
            str(self.data),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--aet",
            self.aet,
            "--log-level",
            "WARNING",
            "--http-port",
            str(self.http_port),
        ]
        if self.config_text:
            (self.workdir / "compacs.toml").write_text(self.config_text)
            cmd += ["--config", str(self.workdir / "compacs.toml")]
        for peer in self.peers:
            cmd += ["--peer", peer]
        cmd += list(self.backends)
        log = (self.workdir / "serve.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_for_echo(self.aet, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "compacs", "stats", "--json"),
                *("--data-dir", str(self.data), *self.backends),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    def counts(self) -> tuple[int, int]:
        """(instances, compression jobs pending), read from the index directly (SQLite
        read-only, or PostgreSQL): a ``compacs stats`` process every 20 ms would start a
        Python interpreter each time and take a core from the node it measures."""
        url = dict(zip(self.backends[::2], self.backends[1::2], strict=True)).get("--index")
        if url and url.startswith("postgresql:"):
            import psycopg

            conn = psycopg.connect(url.replace("postgresql+psycopg:", "postgresql:"))
        else:
            index = self.data / "index.sqlite"
            if not index.exists():
                return 0, 0
            conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        with contextlib.closing(conn):
            (instances,) = conn.execute("SELECT COUNT(*) FROM instances").fetchone()
            (pending,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return instances, pending

    def wait_compressed(self, count: int, timeout: float = 600) -> float:
        """Seconds until ``count`` instances are stored and none is pending."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            instances, pending = self.counts()
            if instances >= count and pending == 0:
                return time.monotonic() - start
            time.sleep(0.02)
        raise RuntimeError("compression did not finish")

    def stored_bytes(self) -> int:
        return self.stats()["bytes_stored"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


class StoreSCP:
    """DCMTK storescp: receives and writes, no index: the ceiling."""

    name = "storescp"

    def __init__(
        self, workdir: Path, *, aet: str = "STORESCP", accept_all: bool = True, fork: bool = True
    ) -> None:
        self.workdir, self.aet, self.port = workdir, aet, free_port()
        self.out = workdir / "received"
        self.accept_all, self.fork = accept_all, fork
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        cmd = ["storescp", "-aet", self.aet, "-od", str(self.out), "-uf"]
        cmd += ["+xa"] if self.accept_all else []
        cmd += ["--fork"] if self.fork else []
        self.proc = subprocess.Popen(
            [*cmd, str(self.port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_echo(self.aet, self.port)
        self.clear()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def files(self) -> list[Path]:
        return [p for p in self.out.iterdir() if p.is_file()]

    def clear(self) -> None:
        for p in self.files():
            p.unlink()

    def stored_bytes(self) -> int:
        return du(self.out)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
