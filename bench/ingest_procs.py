"""Ingest a 200-slice 512x512 CT series with DCMTK storescu, default policy (deferred
JPEG-LS), and measure what issue 15 asks of compression in worker processes: acks/s, the
seconds until every instance is stored compressed, the server's CPU per instance (node +
its descendants, /proc/PID/stat) and the peak PSS of node + descendants while it ingests.

Give several source trees to compare them run by run (interleaved, so that a moment of
load on the shared machine hits each alike); the medians are printed per tree:

    cd bench && PYTHONPATH=.. ../.venv/bin/python ingest_procs.py --runs 3 SRC [SRC ...]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.procfs import cpu_seconds, descendants, pss_kib

from compacs.synthetic import ct_series
from ingest_series import free_port, wait_for_echo


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def tree_cpu(pid: int) -> tuple[float, float]:
    """(node's CPU seconds, its descendants' CPU seconds)."""
    own, others = 0.0, 0.0
    for p in tree(pid):
        try:
            seconds = cpu_seconds(p)
        except OSError:
            continue
        if p == pid:
            own = seconds
        else:
            others += seconds
    return own, others


def tree_pss(pid: int) -> tuple[int, int]:
    """(node's PSS, its descendants' PSS), KiB."""
    own, others = 0, 0
    for p in tree(pid):
        try:
            kib = pss_kib(p)
        except OSError:
            continue
        if p == pid:
            own = kib
        else:
            others += kib
    return own, others


def pending(index: Path) -> int:
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def one_run(src: str, series_dir: Path, data_dir: Path, slices: int) -> dict[str, float]:
    env = {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": src}
    port = free_port()
    node = subprocess.Popen(
        [
            *(sys.executable, "-m", "compacs", "serve", "--data-dir", str(data_dir)),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"),
            *("--http-port", "0"),
        ],
        env=env,
    )
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:  # PSS of node + children every 50 ms while it ingests
        while not stop.is_set():
            own, others = tree_pss(node.pid)
            if own + others > sum(peak):
                peak[:] = [own, others]
            stop.wait(0.05)

    try:
        wait_for_echo(port, env)
        time.sleep(1.0)  # worker processes up
        cpu0 = tree_cpu(node.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "COMPACS", "127.0.0.1", str(port), "+sd", str(series_dir)],
            env=env,
            check=True,
        )
        acked = time.perf_counter() - start
        deadline = time.monotonic() + 600
        index = data_dir / "index.sqlite"
        while pending(index) and time.monotonic() < deadline:  # bounded
            time.sleep(0.02)
        settled = time.perf_counter() - start
        cpu1 = tree_cpu(node.pid)
        stop.set()
        sampler.join()
    finally:
        node.terminate()
        node.wait(60)
    return {
        "acks/s": slices / acked,
        "until compressed s": settled,
        "CPU ms/instance": 1000 * (sum(cpu1) - sum(cpu0)) / slices,
        "CPU node ms/instance": 1000 * (cpu1[0] - cpu0[0]) / slices,
        "CPU children ms/instance": 1000 * (cpu1[1] - cpu0[1]) / slices,
        "peak PSS node MiB": peak[0] / 1024,
        "peak PSS children MiB": peak[1] / 1024,
        "peak PSS total MiB": sum(peak) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sources", nargs="+", help="source trees (PYTHONPATH) to compare")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {src: [] for src in args.sources}
    with tempfile.TemporaryDirectory() as tmp:
        series_dir = Path(tmp) / "series"
        series_dir.mkdir()
        for n, ds in enumerate(ct_series(args.slices)):
            ds.save_as(series_dir / f"CT{n:04d}.dcm", enforce_file_format=True)
        for run in range(args.runs):
            for n, src in enumerate(args.sources):
                data_dir = Path(tmp) / f"data{run}-{n}"
                figures = one_run(src, series_dir, data_dir, args.slices)
                results[src].append(figures)
                print(src, run, {k: round(v, 2) for k, v in figures.items()}, flush=True)
    for src, runs in results.items():
        print(f"\n{src}: medians of {len(runs)}")
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(f"  {key:24s} {statistics.median(values):8.2f}   runs {values}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
