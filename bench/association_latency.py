"""Per-message latency and idle CPU of compacs's associations: pynetdicom's polling
reactors ("polling", the node with ``net/event_reactor`` switched off in its process)
beside the event-driven ones, alternating, in the same minutes (the machine is shared).

    cd bench && PYTHONPATH=.. ../.venv/bin/python association_latency.py [--runs 3]

Per run and variant, a fresh node (compression off):
- storescu (TCP_NODELAY=1): 200 small CT instances on one association, acks/s;
- findscu: C-FIND IMAGE with 200 matches, ms for the whole run;
- movescu: C-MOVE of the study (200 instances) to DCMTK storescp, ms;
- a pynetdicom SCU (itself event driven, so that the client adds no polling): 200 C-ECHOs
  and a 200-match C-FIND on one association, ms per message;
- CPU seconds of the node over 5 s with 8 idle associations open.
Medians of the runs are printed; numbers are measured, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.dcmtk import dcmtk_env
from tests.support.latency import echo_ms, find_ms, idle_cpu
from tests.support.node import NO_COMPRESSION, NodeProcess, PollingNode, write_config

from compacs.synthetic import ct_series
from peers import StoreSCP  # bench/ is the working directory (see bench/README.md)


def write_series(folder: Path, count: int = 200) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(ct_series(count, 16, 16, seed=5)):
        ds.save_as(folder / f"CT{n:04d}.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def storescu_acks_per_s(node: NodeProcess, folder: Path, count: int) -> float:
    cmd = ["storescu", "-aet", "LATENCY", "-aec", node.aet, "127.0.0.1", str(node.port)]
    start = time.perf_counter()
    subprocess.run([*cmd, "+sd", str(folder)], env=dcmtk_env(), check=True, capture_output=True)
    return count / (time.perf_counter() - start)


def findscu_ms(node: NodeProcess, study: str, series: str) -> float:
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}"]
    keys += [f"SeriesInstanceUID={series}", "SOPInstanceUID"]
    cmd = ["findscu", "-S", "-aet", "LATENCY", "-aec", node.aet]
    for key in keys:
        cmd += ["-k", key]
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "127.0.0.1", str(node.port)], env=dcmtk_env(), check=True, capture_output=True
    )
    return (time.perf_counter() - start) * 1000


def movescu_ms(node: NodeProcess, study: str, dest: StoreSCP, count: int) -> float:
    dest.clear()
    cmd = ["movescu", "-S", "-aet", "LATENCY", "-aec", node.aet, "-aem", dest.aet]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    start = time.perf_counter()
    subprocess.run(
        [*cmd, "127.0.0.1", str(node.port)], env=dcmtk_env(), check=True, capture_output=True
    )
    elapsed = (time.perf_counter() - start) * 1000
    assert len(dest.files()) == count, len(dest.files())
    return elapsed


def one_run(
    kind: type[NodeProcess], work: Path, folder: Path, uids: tuple[str, str], dest: StoreSCP
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work / "plain.toml", NO_COMPRESSION)
    peer = f"{dest.aet}@127.0.0.1:{dest.port}"
    extra = ("--log-level", "WARNING", "--peer", peer)
    node = kind(work / "data", config=config, extra_args=extra).start()
    try:
        return {
            "C-STORE acks/s (storescu, 200 small)": storescu_acks_per_s(node, folder, 200),
            "C-FIND IMAGE 200 matches, findscu (ms)": findscu_ms(node, *uids),
            "C-MOVE 200 to storescp, movescu (ms)": movescu_ms(node, uids[0], dest, 200),
            "C-FIND response, pynetdicom SCU (ms each)": find_ms(node, *uids),
            "C-ECHO, pynetdicom SCU, one association (ms each)": echo_ms(node),
            "node CPU, 8 idle associations, 5 s (s)": idle_cpu(node),
        }
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "series"
        uids = write_series(folder)
        results: dict[str, dict[str, list[float]]] = {"polling": {}, "event-driven": {}}
        dest = StoreSCP(work / "dest", aet="DEST", fork=False)
        dest.start()
        try:
            for n in range(args.runs):
                for name, kind in (("polling", PollingNode), ("event-driven", NodeProcess)):
                    out = one_run(kind, work / f"{name}-{n}", folder, uids, dest)
                    for key, value in out.items():
                        results[name].setdefault(key, []).append(value)
                    print(name, n, {k: round(v, 3) for k, v in out.items()}, flush=True)
        finally:
            dest.stop()
    print(f"\n| median of {args.runs} | polling (before) | event-driven (after) |")
    print("|---|---|---|")
    for key in results["polling"]:
        before = statistics.median(results["polling"][key])
        after = statistics.median(results["event-driven"][key])
        print(f"| {key} | {before:.3f} | {after:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
