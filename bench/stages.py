"""Where an instance's time goes, per stage: a py-spy profile of the node and its worker
processes while DCMTK storescu sends a 200-slice CT series (default policy: deferred
JPEG-LS, verified) and movescu retrieves it to a storescp that accepts only uncompressed
syntaxes, read into ms per instance for receive, parse, store, index, encode, verify,
send and the rest (issue 15's "before/after profile per stage").

Busy samples only: a thread waiting (select, poll, a condition, a queue) is not counted;
fsync is (a C-STORE waits for it). py-spy slows what it samples, so read the figures as
shares of the work, and compare trees measured the same way. The source tree measured is
the one on PYTHONPATH:

    cd bench && PYTHONPATH=.. ../.venv/bin/python stages.py [--slices 200] [--rate 250]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compacs.synthetic import ct_series
from peers import ENV, Compacs, StoreSCP, send_folder

PY_SPY = Path(sys.executable).parent / "py-spy"

# (stage, markers): the first stage one of whose markers is in a sample's stack. Worker
# processes are told apart by the forkserver in their command line.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    # a retrieve's decoding for the peer counts as send, wherever it runs
    ("send", ("retrieve.py", "send_c_store", "sender.py", "convert.py", "decode_for_peer")),
    ("verify", ("_jls_read_as_others", "_jls_decode", "verified", "array_equal")),
    ("encode", ("_jls_encode", "_j2k_encode", "_htj2k_encode", "_jxl_encode", "_rle_encode")),
    ("index", ("compacs/index/", "sqlite3", "psycopg")),
    ("store", ("compacs/storage/", "fsync")),
    ("parse", ("Ingest._checked", "dcmread", "structure_problem", "attributes.py")),
    ("receive", ("dul.py", "dimse", "transport.py", "event_reactor.py", "net/store.py")),
]
IDLE = ("select", "poll", "Condition.wait", "Queue.get", "sleep", "accept", "_recv ", "wait (")


def stage_of(stack: str) -> str | None:
    """The stage of one sample, None when the thread was waiting."""
    leaf = stack.rsplit(";", 1)[-1]
    if any(mark in leaf for mark in IDLE):
        return None
    for stage, markers in STAGES:
        if any(mark in stack for mark in markers):
            return stage
    return "other"


def read_profile(path: Path, rate: int) -> tuple[dict[str, float], dict[str, float]]:
    """Busy seconds per stage, in the node and in its worker processes."""
    node: collections.Counter[str] = collections.Counter()
    workers: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stage = stage_of(stack)
        if stage is None:
            continue
        frames = stack.split(";")
        in_worker = len(frames) > 1 and "forkserver" in frames[1]
        (workers if in_worker else node)[stage] += int(count) / rate
    return dict(node), dict(workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compacs-stages-") as tmp:
        base = Path(tmp)
        series = base / "series"
        series.mkdir()
        for n, ds in enumerate(ct_series(args.slices, seed=2026)):
            ds.save_as(series / f"CT{n:04d}.dcm", enforce_file_format=True)
        dest = StoreSCP(base / "dest", aet="DEST_UNC", accept_all=False, fork=False)
        dest.start()
        node = Compacs(base / "node", peers=(f"DEST_UNC@127.0.0.1:{dest.port}",))
        node.start()
        profile = base / "profile.txt"
        spy = subprocess.Popen(
            [
                *(str(PY_SPY), "record", "-p", str(node.pid), "-r", str(args.rate)),
                *("--subprocesses", "-f", "raw", "-o", str(profile), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # py-spy attached to the node and its workers
            start = time.perf_counter()
            send_folder(node.aet, node.port, series)
            acked = time.perf_counter() - start
            node.wait_compressed(args.slices)
            settled = time.perf_counter() - start
            study = str(ds.StudyInstanceUID)
            start = time.perf_counter()
            subprocess.run(
                [
                    *("movescu", "-S", "-aem", "DEST_UNC", "-aec", node.aet),
                    *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"),
                    *("127.0.0.1", str(node.port)),
                ],
                env=ENV,
                check=True,
                capture_output=True,
            )
            moved = time.perf_counter() - start
        finally:
            spy.send_signal(2)
            spy.wait(60)
            node.stop()
            dest.stop()
        in_node, in_workers = read_profile(profile, args.rate)
    per = 1000 / args.slices
    print(
        f"\n{args.slices}-slice CT under py-spy at {args.rate} Hz: acks {acked:.1f} s, "
        f"compressed {settled:.1f} s, C-MOVE to uncompressed-only {moved:.1f} s"
    )
    print("\n| stage | node (ms/instance) | worker processes (ms/instance) |")
    print("|---|---|---|")
    for stage in [s for s, _ in STAGES] + ["other"]:
        a, b = in_node.get(stage, 0.0) * per, in_workers.get(stage, 0.0) * per
        print(f"| {stage} | {a:.1f} | {b:.1f} |")
    total_node, total_workers = sum(in_node.values()) * per, sum(in_workers.values()) * per
    print(f"| all busy samples | {total_node:.1f} | {total_workers:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
