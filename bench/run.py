"""`make bench`: compacs beside DCMTK storescp and Orthanc, measured in one run.

Every figure is a median over --runs fresh servers; ratios compare servers measured in
the same run, on the same 2-core machine, with the same DCMTK clients (TCP_NODELAY=1).
Writes report.md and PNG plots to bench/results/<time>/ and prints the report.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from tests.orthanc import OrthancPeer  # the repository root is on PYTHONPATH (Makefile)

from compacs.synthetic import ct_series
from index_scale import index_scale
from peers import ENV, Compacs, StoreSCP, cpu_seconds, free_port, peak_rss_mb

JLS = "1.2.840.10008.1.2.4.80"
SMALLEST = '[[compression.rules]]\naction = "smallest"\n'
HERE = Path(__file__).resolve().parent


def run(cmd: list[str], timeout: float = 600) -> float:
    """Wall seconds of a client command; it must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-800:]}")
    return time.perf_counter() - start


def storescu(aet: str, port: int, folder: Path) -> list[str]:
    return ["storescu", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port), "+sd", str(folder)]


def median_ms(fn: Callable[[], float], n: int) -> float:
    return statistics.median(fn() for _ in range(n)) * 1000


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.series = work / "series"
        self.halves = [work / "half0", work / "half1"]
        self.originals: dict[str, np.ndarray] = {}
        self.received_bytes = 0
        self.results: dict[str, dict[str, float | str]] = {}
        self.dest_all = StoreSCP(work / "dest_all", aet="DEST_ALL", accept_all=True, fork=False)
        self.dest_unc = StoreSCP(work / "dest_unc", aet="DEST_UNC", accept_all=False, fork=False)

    # -- data ------------------------------------------------------------------------------
    def prepare(self) -> None:
        for folder in (self.series, *self.halves):
            folder.mkdir()
        for n, ds in enumerate(ct_series(self.args.slices, seed=2026)):
            path = self.series / f"CT{n:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            shutil.copy(path, self.halves[n % 2] / path.name)
            self.originals[str(ds.SOPInstanceUID)] = ds.pixel_array
            self.received_bytes += path.stat().st_size
        self.study_uid = str(ds.StudyInstanceUID)
        self.series_uid = str(ds.SeriesInstanceUID)

    # -- servers ---------------------------------------------------------------------------
    def servers(self) -> dict[str, Callable[[Path], object]]:
        dests = {
            "DEST_ALL": ("DEST_ALL", "127.0.0.1", self.dest_all.port),
            "DEST_UNC": ("DEST_UNC", "127.0.0.1", self.dest_unc.port),
            "BENCH": ("BENCH", "127.0.0.1", free_port()),
        }
        peers = (
            f"DEST_ALL@127.0.0.1:{self.dest_all.port}",
            f"DEST_UNC@127.0.0.1:{self.dest_unc.port}",
        )

        def orthanc(transcoding: str | None) -> Callable[[Path], object]:
            return lambda wd: OrthancPeer(
                wd,
                dicom_port=free_port(),
                http_port=free_port(),
                ingest_transcoding=transcoding,
                modalities=dests,
            )

        return {
            "storescp": lambda wd: StoreSCP(wd),
            "orthanc": orthanc(None),
            "orthanc-jls": orthanc(JLS),
            "compacs": lambda wd: Compacs(wd, peers=peers),
            "compacs-smallest": lambda wd: Compacs(wd, config=SMALLEST, peers=peers),
        }

    def stored(self, server: object) -> float:
        if isinstance(server, Compacs):
            return server.wait_compressed(self.args.slices)
        if isinstance(server, OrthancPeer):
            return server.wait_until(self.args.slices, timeout=600)
        deadline = time.monotonic() + 120
        while len(server.files()) < self.args.slices and time.monotonic() < deadline:
            time.sleep(0.05)
        return 0.0

    # -- one server ------------------------------------------------------------------------
    def measure(self, name: str, make: Callable[[Path], object]) -> None:
        one, two, settled, cpu, rss, stored = [], [], [], [], [], []
        for n in range(self.args.runs):
            for parallel in (1, 2):
                server = make(self.work / f"{name}-{n}-{parallel}")
                server.start()
                try:
                    cpu0 = cpu_seconds(server.pid)
                    start = time.perf_counter()
                    if parallel == 1:
                        run(storescu(server.aet, server.port, self.series))
                    else:
                        threads = [
                            threading.Thread(
                                target=run, args=(storescu(server.aet, server.port, half),)
                            )
                            for half in self.halves
                        ]
                        for t in threads:
                            t.start()
                        for t in threads:
                            t.join()
                    acked = time.perf_counter() - start
                    self.stored(server)
                    done = time.perf_counter() - start
                    (one if parallel == 1 else two).append(self.args.slices / acked)
                    if parallel == 1:
                        settled.append(done)
                        cpu.append((cpu_seconds(server.pid) - cpu0) * 1000 / self.args.slices)
                        rss.append(peak_rss_mb(server.pid))
                        stored.append(server.stored_bytes())
                        if n == 0 and name != "storescp":
                            self.queries(name, server)
                finally:
                    server.stop()
        r = self.results.setdefault(name, {})
        r["ingest 1 assoc (inst/s)"] = statistics.median(one)
        r["ingest 2 assoc (inst/s)"] = statistics.median(two)
        r["until stored as kept (s)"] = statistics.median(settled)
        r["stored (MiB)"] = statistics.median(stored) / 2**20
        r["ratio"] = self.received_bytes / statistics.median(stored)
        r["server CPU (ms/instance)"] = statistics.median(cpu)
        r["peak RSS (MB)"] = statistics.median(rss)
        print(f"  {name}: {r}", flush=True)

    def queries(self, name: str, server: object) -> None:
        r = self.results.setdefault(name, {})
        aet, port = server.aet, str(server.port)
        base = ["-aet", "BENCH", "-aec", aet, "127.0.0.1", port]
        r["C-ECHO (ms)"] = median_ms(lambda: run(["echoscu", *base]), 10)
        r["C-FIND STUDY (ms)"] = median_ms(
            lambda: run(
                [
                    "findscu",
                    "-S",
                    "-k",
                    "QueryRetrieveLevel=STUDY",
                    "-k",
                    "PatientID=SYN0001",
                    "-k",
                    "StudyInstanceUID",
                    *base,
                ]
            ),
            5,
        )
        r["C-FIND IMAGE (ms)"] = median_ms(
            lambda: run(
                [
                    "findscu",
                    "-S",
                    "-k",
                    "QueryRetrieveLevel=IMAGE",
                    "-k",
                    f"StudyInstanceUID={self.study_uid}",
                    "-k",
                    f"SeriesInstanceUID={self.series_uid}",
                    "-k",
                    "SOPInstanceUID",
                    *base,
                ]
            ),
            5,
        )
        for dest, label in ((self.dest_unc, "uncompressed-only"), (self.dest_all, "accept-all")):
            dest.clear()
            start = time.perf_counter()
            run(
                [
                    "movescu",
                    "-S",
                    "-aem",
                    dest.aet,
                    "-k",
                    "QueryRetrieveLevel=STUDY",
                    "-k",
                    f"StudyInstanceUID={self.study_uid}",
                    *base,
                ]
            )
            deadline = time.monotonic() + 300  # Orthanc may answer before it has sent all
            while len(dest.files()) < self.args.slices and time.monotonic() < deadline:
                time.sleep(0.02)
            r[f"C-MOVE to {label} (s)"] = time.perf_counter() - start
            r[f"C-MOVE to {label} bit-exact"] = "yes" if self.bit_exact(dest) else "NO"

    def bit_exact(self, dest: StoreSCP) -> bool:
        files = dest.files()
        if len(files) != self.args.slices:
            return False
        for path in files:
            ds = pydicom.dcmread(path)
            if not np.array_equal(ds.pixel_array, self.originals[str(ds.SOPInstanceUID)]):
                return False
        return True


def report(bench: Bench, scale: dict, out: Path, seconds: float) -> str:
    names = list(bench.results)
    metrics = list(dict.fromkeys(m for r in bench.results.values() for m in r))
    lines = [
        f"# compacs benchmark, {datetime.now().isoformat(timespec='minutes')}",
        "",
        f"{bench.args.slices}-slice generated CT (512x512, 12 bits), median of "
        f"{bench.args.runs} runs, 2 cores; run took {seconds:.0f} s.",
        "",
        "| metric | " + " | ".join(names) + " | compacs / orthanc | compacs / orthanc-jls |",
        "|---" * (len(names) + 3) + "|",
    ]
    for m in metrics:
        cells = []
        for n in names:
            v = bench.results[n].get(m, "")
            cells.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        ratios = []
        for peer in ("orthanc", "orthanc-jls"):
            a, b = bench.results["compacs"].get(m), bench.results.get(peer, {}).get(m)
            ok = isinstance(a, float) and isinstance(b, float) and b
            ratios.append(f"{a / b:.2f}x" if ok else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    lines += [
        "",
        "## C-FIND latency against index size (ms, median of 5, findscu)",
        "",
        "| instances | " + " | ".join(scale["queries"]) + " |",
        "|---" * (len(scale["queries"]) + 1) + "|",
    ]
    for size, row in scale["compacs"].items():
        lines.append(
            f"| compacs {size:,} | " + " | ".join(f"{row[q]:.1f}" for q in scale["queries"]) + " |"
        )
    for size, row in scale.get("orthanc", {}).items():
        lines.append(
            f"| Orthanc {size:,} | " + " | ".join(f"{row[q]:.1f}" for q in scale["queries"]) + " |"
        )
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    plots(bench, scale, out)
    return text


def plots(bench: Bench, scale: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bench.results)
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    for i, key in enumerate(("ingest 1 assoc (inst/s)", "ingest 2 assoc (inst/s)")):
        ax.bar(x + i * 0.4, [bench.results[n][key] for n in names], 0.4, label=key)
    settled = [bench.args.slices / bench.results[n]["until stored as kept (s)"] for n in names]
    ax.plot(x + 0.2, settled, "ko", label="until stored as kept (inst/s)")
    ax.set_xticks(x + 0.2, names)
    ax.set_ylabel("instances per second")
    ax.legend()
    ax.set_title("Ingest of a 512x512 CT series")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = list(scale["compacs"])
    for q in scale["queries"]:
        ax.plot(sizes, [scale["compacs"][s][q] for s in sizes], marker="o", label=f"compacs {q}")
    for size, row in scale.get("orthanc", {}).items():
        for q in scale["queries"]:
            ax.plot([size], [row[q]], marker="x", linestyle="", label=f"Orthanc {q}")
    ax.set_xscale("log")
    ax.set_xlabel("instances in the index")
    ax.set_ylabel("C-FIND latency (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cfind_latency.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--index-sizes", default="1000,100000,1000000")
    parser.add_argument("--only", help="comma-separated servers to run (default: all)")
    args = parser.parse_args()
    started = time.monotonic()
    out = HERE / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="compacs-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.prepare()
        bench.dest_all.start()
        bench.dest_unc.start()
        try:
            for name, make in bench.servers().items():
                if args.only and name not in args.only.split(","):
                    continue
                print(f"measuring {name}", flush=True)
                bench.measure(name, make)
            sizes = [int(s) for s in args.index_sizes.split(",") if s]
            scale = index_scale(Path(tmp) / "scale", sizes)
        finally:
            bench.dest_all.stop()
            bench.dest_unc.stop()
        text = report(bench, scale, out, time.monotonic() - started)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
