"""Ingest on the embedded default (SQLite + filesystem) beside PostgreSQL + S3.

The same generated 200-slice CT series goes to a fresh compacs node with DCMTK storescu,
once per backend pair, ``--runs`` times; the medians of the acknowledgement rate and of
the time until everything is stored compressed (``pending`` = 0) are printed as a
markdown table with the ratio against the embedded default. PostgreSQL and the S3 server
(SeaweedFS) are the real servers the test suite uses (tests/servers.py), on 127.0.0.1.

    cd bench && PYTHONPATH=.. ../.venv/bin/python backends.py [--slices 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import S3_CREDENTIALS, PostgresServer, S3Server  # PYTHONPATH=..

from compacs.synthetic import ct_series
from peers import ENV, Compacs, cpu_seconds


def run_once(work: Path, series: Path, slices: int, backends: tuple[str, ...]) -> dict:
    node = Compacs(work, backends=backends)
    node.start()
    try:
        cpu0 = cpu_seconds(node.pid)
        start = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", node.aet, "127.0.0.1", str(node.port), "+sd", str(series)],
            env=ENV,
            check=True,
            capture_output=True,
        )
        acked = time.perf_counter() - start
        node.wait_compressed(slices)
        settled = time.perf_counter() - start
        return {
            "ack rate (inst/s)": slices / acked,
            "until stored compressed (s)": settled,
            "node CPU (ms/instance)": (cpu_seconds(node.pid) - cpu0) * 1000 / slices,
        }
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(S3_CREDENTIALS)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        series = base / "series"
        series.mkdir()
        for n, ds in enumerate(ct_series(args.slices, seed=2026)):
            ds.save_as(series / f"CT{n:04d}.dcm", enforce_file_format=True)
        postgres = PostgresServer().start()
        s3 = S3Server(base / "s3").start()
        try:
            results: dict[str, list[dict]] = {"SQLite + filesystem": [], "PostgreSQL + S3": []}
            for run in range(args.runs):
                results["SQLite + filesystem"].append(
                    run_once(base / f"embedded{run}", series, args.slices, ())
                )
                backends = ("--index", postgres.database(), "--store", s3.url())
                results["PostgreSQL + S3"].append(
                    run_once(base / f"scaled{run}", series, args.slices, backends)
                )
        finally:
            s3.stop()
            postgres.stop()
    metrics = list(results["SQLite + filesystem"][0])
    medians = {
        name: {m: statistics.median(r[m] for r in runs) for m in metrics}
        for name, runs in results.items()
    }
    print(f"\n{args.slices}-slice 512x512 CT, storescu, one association, median of {args.runs}")
    print("| metric | SQLite + filesystem | PostgreSQL + S3 | ratio |")
    print("|---|---|---|---|")
    for m in metrics:
        a, b = medians["SQLite + filesystem"][m], medians["PostgreSQL + S3"][m]
        print(f"| {m} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
