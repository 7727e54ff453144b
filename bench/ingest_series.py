"""Send a generated 200-slice CT series to a fresh compacs node with DCMTK storescu.

Prints the storescu wall time, the time until everything is stored compressed by the
default policy (``pending`` = 0), and `compacs stats --json`. A first building
block of the benchmark suite (the side-by-side comparison with storescp and Orthanc
comes with `make bench`).

    .venv/bin/python bench/ingest_series.py [--slices 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compacs.synthetic import ct_series


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_echo(port: int, env: dict[str, str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = subprocess.run(
            ["echoscu", "-aec", "COMPACS", "127.0.0.1", str(port)], env=env, capture_output=True
        )
        if ok.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("node did not answer C-ECHO")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "TCP_NODELAY": "1"}

    with tempfile.TemporaryDirectory() as tmp:
        series_dir = Path(tmp) / "series"
        series_dir.mkdir()
        for n, ds in enumerate(ct_series(args.slices)):
            ds.save_as(series_dir / f"CT{n:04d}.dcm", enforce_file_format=True)
        times, settled, stats = [], [], {}
        for run in range(args.runs):
            data_dir = Path(tmp) / f"data{run}"
            port = free_port()
            node = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "compacs",
                    "serve",
                    "--data-dir",
                    str(data_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "WARNING",
                    "--http-port",
                    "0",
                ],
            )
            try:
                wait_for_echo(port, env)
                start = time.perf_counter()
                subprocess.run(
                    ["storescu", "-aec", "COMPACS", "127.0.0.1", str(port), "+sd", str(series_dir)],
                    env=env,
                    check=True,
                )
                times.append(time.perf_counter() - start)
                stats_cmd = [sys.executable, "-m", "compacs", "stats", "--json"]
                stats_cmd += ["--data-dir", str(data_dir)]
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:  # bounded: 10 minutes at most
                    out = subprocess.run(stats_cmd, capture_output=True, text=True, check=True)
                    stats = json.loads(out.stdout)
                    if stats["pending"] == 0:
                        break
                    time.sleep(0.1)
                settled.append(time.perf_counter() - start)
                assert stats["instances"] == args.slices, stats
            finally:
                node.terminate()
                node.wait(60)
        median = statistics.median(times)
        print(
            f"storescu, {args.slices} x 512x512 CT, one association: runs "
            + ", ".join(f"{t:.2f} s" for t in times)
            + f"; median {median:.2f} s = {args.slices / median:.0f} instances/s"
        )
        median = statistics.median(settled)
        print(
            "until stored compressed (pending = 0): runs "
            + ", ".join(f"{t:.2f} s" for t in settled)
            + f"; median {median:.2f} s = {args.slices / median:.0f} instances/s"
        )
        print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
