"""Ingest on the embedded default (SQLite + filesystem) beside PostgreSQL + S3.

The same generated 200-slice CT series goes to a fresh compacs node with DCMTK storescu,
once per backend pair, ``--runs`` times; the medians of the acknowledgement rate and of
the time until everything is stored compressed (``pending`` = 0) are printed as a
markdown table with the ratio against the embedded default. PostgreSQL and the S3 server
(SeaweedFS) are the real servers the test suite uses (tests/support/servers.py), on 127.0.0.1.

    cd bench && PYTHONPATH=.. ../.venv/bin/python backends.py [--slices 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.support.servers import S3_CREDENTIALS, PostgresServer, S3Server  # PYTHONPATH=..

from compacs.synthetic import ct_series
from peers import Compacs, cpu_seconds, send_folder


def run_once(work: Path, series: Path, slices: int, backends: tuple[str, ...]) -> dict:
    node = Compacs(work, backends=backends)
    node.start()
    try:
        cpu0 = cpu_seconds(node.pid)
        start = time.perf_counter()
        send_folder(node.aet, node.port, series)
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
            pairs = {
                "SQLite + filesystem": lambda: (),
                "PostgreSQL + S3": lambda: ("--index", postgres.database(), "--store", s3.url()),
                # the two halves apart: which of them costs what
                "PostgreSQL + filesystem": lambda: ("--index", postgres.database()),
                "SQLite + S3": lambda: ("--store", s3.url()),
            }
            results: dict[str, list[dict]] = {name: [] for name in pairs}
            for run in range(args.runs):  # interleaved: a moment of load hits each alike
                for n, (name, backends) in enumerate(pairs.items()):
                    work = base / f"{n}-{run}"
                    results[name].append(run_once(work, series, args.slices, backends()))
        finally:
            s3.stop()
            postgres.stop()
    metrics = list(results["SQLite + filesystem"][0])
    medians = {
        name: {m: statistics.median(r[m] for r in runs) for m in metrics}
        for name, runs in results.items()
    }
    print(f"\n{args.slices}-slice 512x512 CT, storescu, one association, median of {args.runs}")
    print("| backends | " + " | ".join(metrics) + " | ack rate vs SQLite + filesystem |")
    print("|---" * (len(metrics) + 2) + "|")
    embedded = medians["SQLite + filesystem"]
    for name, row in medians.items():
        cells = " | ".join(f"{row[m]:.1f}" for m in metrics)
        ratio = row["ack rate (inst/s)"] / embedded["ack rate (inst/s)"]
        print(f"| {name} | {cells} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
