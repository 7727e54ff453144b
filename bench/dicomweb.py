"""`make bench-dicomweb`: compacs's DICOMweb beside Orthanc's DICOMweb plugin, in one run
(issue 17).

Servers, each started fresh on free 127.0.0.1 ports: compacs with its default policy (stores
JPEG-LS), Orthanc 1.10 with Debian's DICOMweb plugin storing what it receives ("orthanc"),
and the same with JPEG-LS ingest transcoding ("orthanc-jls", the like-for-like peer).
Every server gets the same generated CT series (``compacs.synthetic.ct_series``, 512x512,
16-bit), over HTTP only, one keep-alive connection, no proxy:

- STOW-RS: ``POST /dicom-web/studies``, ``--batch`` Part 10 instances per
  ``multipart/related; type="application/dicom"`` request; instances per second until the
  last answer (the server has acknowledged them; compression may go on afterwards);
- QIDO-RS: the study by PatientID, the study's series, the series' instances (every one of
  them); median milliseconds over ``--repeat`` requests each;
- WADO-RS: the whole series, ``transfer-syntax=*`` (as stored) and the default (Explicit VR
  Little Endian: compacs and Orthanc-JLS decode); median of 3, as native-pixel MB/s and
  bytes sent. Each answer's part count is checked against the series.

Ratios are compacs's figure over each Orthanc's (> 1: compacs faster, for latencies the
inverse). Writes results/<time>/dicomweb.md and prints it. Usage (from this folder,
repository root on PYTHONPATH): ``python dicomweb.py [--slices 200] [--batch 10]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from tests.support.orthanc import OrthancPeer

from compacs.synthetic import ct_series
from peers import Compacs, free_port
from run import JLS

HERE = Path(__file__).resolve().parent
ROOT = "/dicom-web"
WADO_RUNS = 3
SERIES_ACCEPT = {
    "as stored (*)": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "default (Explicit VR LE)": 'multipart/related; type="application/dicom"',
}


class Client:
    """One keep-alive HTTP/1.1 connection to a server's DICOMweb root."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> bytes:
        self.conn.request(method, f"{ROOT}{path}", body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status not in (200, 202):
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return data

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the server answers a QIDO-RS search (the web server may start after DICOM)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", "/studies", Accept="application/dicom+json")
                return
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                self.conn.close()
                time.sleep(0.1)

    def close(self) -> None:
        self.conn.close()


def part10(ds: Any) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart_body(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for data in files:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data]
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def parts_in(body: bytes) -> int:
    """The number of body parts of a multipart answer (its first line is the delimiter)."""
    delimiter = body.split(b"\r\n", 1)[0]
    return body.count(delimiter + b"\r\n")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        series = list(ct_series(args.slices, seed=2026, patient_id="DWBENCH"))
        self.files = [part10(ds) for ds in series]
        self.study = str(series[0].StudyInstanceUID)
        self.series = str(series[0].SeriesInstanceUID)
        self.pixel_mb = sum(len(ds.PixelData) for ds in series) / 1e6
        self.results: dict[str, dict[str, float]] = {}

    def servers(self) -> dict[str, Callable[[Path], Any]]:
        def orthanc(transcoding: str | None) -> Callable[[Path], Any]:
            return lambda wd: OrthancPeer(
                wd,
                dicom_port=free_port(),
                http_port=free_port(),
                ingest_transcoding=transcoding,
                dicomweb=True,
            )

        return {
            "compacs": lambda wd: Compacs(wd, http_port=free_port()),
            "orthanc": orthanc(None),
            "orthanc-jls": orthanc(JLS),
        }

    def measure(self, name: str, make: Callable[[Path], Any]) -> None:
        server = make(self.work / name)
        server.start()
        client = Client(server.http_port)
        client.wait_ready()
        figures: dict[str, float] = {}
        try:
            start = time.perf_counter()
            for files in batches(self.files, self.args.batch):
                body, content_type = multipart_body(files)
                client.request(
                    "POST", "/studies", body, **{"Content-Type": content_type}, Accept="*/*"
                )
            figures["STOW-RS (instances/s)"] = len(self.files) / (time.perf_counter() - start)
            if isinstance(server, Compacs):
                server.wait_compressed(len(self.files))
            else:
                server.wait_until(len(self.files))
            json_accept = {"Accept": "application/dicom+json"}
            queries = {
                "QIDO studies by PatientID (ms)": "/studies?PatientID=DWBENCH",
                "QIDO series of the study (ms)": f"/studies/{self.study}/series",
                f"QIDO {len(self.files)} instances of the series (ms)": (
                    f"/studies/{self.study}/series/{self.series}/instances"
                ),
            }
            for label, path in queries.items():
                found = json.loads(client.request("GET", path, **json_accept))
                expected = len(self.files) if "instances" in label else 1
                if len(found) != expected:
                    raise RuntimeError(f"{name}: {path} found {len(found)}, not {expected}")
                figures[label] = median_ms(
                    lambda p=path: client.request("GET", p, **json_accept), self.args.repeat
                )
            for label, accept in SERIES_ACCEPT.items():
                path = f"/studies/{self.study}/series/{self.series}"
                sizes: list[int] = []

                def retrieve(p: str = path, a: str = accept, out: list[int] = sizes) -> None:
                    body = client.request("GET", p, Accept=a)
                    if parts_in(body) != len(self.files):
                        raise RuntimeError(f"{name}: {parts_in(body)} parts, not all instances")
                    out.append(len(body))

                ms = median_ms(retrieve, WADO_RUNS)
                figures[f"WADO-RS series {label} (MB/s)"] = self.pixel_mb / (ms / 1000)
                figures[f"WADO-RS series {label} (MB sent)"] = sizes[-1] / 1e6
        finally:
            client.close()
            server.stop()
        self.results[name] = figures


LOWER_IS_BETTER = "(ms)"


def report(bench: Bench, seconds: float) -> str:
    names = list(bench.results)
    metrics = list(bench.results[names[0]])
    peers = [n for n in names if n != "compacs" and "compacs" in names]
    head = ["metric", *names, *(f"compacs vs {p}" for p in peers)]
    lines = [
        f"# DICOMweb: compacs beside Orthanc's DICOMweb plugin ({datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"{bench.args.slices} CT slices 512x512x16 ({bench.pixel_mb:.0f} MB of pixels), STOW "
        f"batches of {bench.args.batch}, QIDO median of {bench.args.repeat}, WADO median of "
        f"{WADO_RUNS}; one run, {seconds:.0f} s. Ratios: times better (> 1) or worse (< 1) "
        "than the peer.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for metric in metrics:
        row = [metric, *(f"{bench.results[n][metric]:.1f}" for n in names)]
        for peer in peers:
            ours, theirs = bench.results["compacs"][metric], bench.results[peer][metric]
            if metric.endswith("(MB sent)"):
                row.append(f"{ours / theirs:.2f}x the bytes")
            elif metric.endswith(LOWER_IS_BETTER):
                row.append(f"{theirs / ours:.2f}x")
            else:
                row.append(f"{ours / theirs:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--servers", default="compacs,orthanc,orthanc-jls")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        bench = Bench(args, Path(tmp))
        for name, make in bench.servers().items():
            if name not in args.servers.split(","):
                continue
            print(f"{name} ...", flush=True)
            bench.measure(name, make)
    text = report(bench, time.monotonic() - started)
    out = HERE / "results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dicomweb.md").write_text(text)
    print(text)
    print(f"written to {out / 'dicomweb.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
