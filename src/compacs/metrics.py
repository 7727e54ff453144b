"""Prometheus metrics: counters the services increment, gauges read from the index at
scrape time, served as text exposition format 0.0.4 on ``/metrics``.

Kept to the few types compacs needs (counters with labels, and gauges computed on
demand) rather than a client library: the format is a dozen lines.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] += amount

    def samples(self) -> list[tuple[Labels, float]]:
        with self._lock:
            return list(self._values.items())


ASSOCIATIONS = Counter("compacs_associations_total", "Associations by outcome.")
STORES = Counter("compacs_stores_total", "C-STORE requests by status category.")
BYTES_RECEIVED = Counter("compacs_received_bytes_total", "Bytes of data sets received.")
CODEC_SECONDS = Counter(
    "compacs_compression_seconds_total", "Seconds spent compressing (encode and verify)."
)
CODEC_RUNS = Counter("compacs_compressions_total", "Compression jobs by result and syntax.")
COUNTERS = (ASSOCIATIONS, STORES, BYTES_RECEIVED, CODEC_SECONDS, CODEC_RUNS)

Gauges = Callable[[], list[tuple[str, str, Labels, float]]]
"""(name, help, labels, value) read at scrape time."""


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def exposition(gauges: Gauges) -> str:
    lines: list[str] = []
    for counter in COUNTERS:
        lines += [f"# HELP {counter.name} {counter.help}", f"# TYPE {counter.name} counter"]
        lines += [f"{counter.name}{_labels(k)} {v:g}" for k, v in sorted(counter.samples())]
    seen: set[str] = set()
    for name, help_text, labels, value in gauges():
        if name not in seen:
            seen.add(name)
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines.append(f"{name}{_labels(labels)} {value:g}")
    return "\n".join(lines) + "\n"


def index_gauges(stats: Callable[[], dict]) -> Gauges:
    """Gauges from the index's ``stats()`` document."""

    def read() -> list[tuple[str, str, Labels, float]]:
        s = stats()
        out = [
            ("compacs_instances", "Instances stored.", (), s["instances"]),
            ("compacs_stored_bytes", "Bytes stored.", (), s["bytes_stored"]),
            (
                "compacs_received_bytes",
                "Bytes as received, of those stored.",
                (),
                s["bytes_received"],
            ),
            ("compacs_compression_pending", "Compression queue length.", (), s["pending"]),
        ]
        for destination, entry in s.get("forwarding", {}).items():
            for state, n in entry.items():
                if state != "bytes_sent":
                    labels = (("destination", destination), ("state", state))
                    out.append(("compacs_forward_items", "Forwarding queue items.", labels, n))
        return out

    return read


class MetricsServer:
    """``GET /metrics`` on its own port (127.0.0.1 by default), in a daemon thread."""

    def __init__(self, host: str, port: int, gauges: Gauges) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = exposition(gauges).encode()
                except Exception:
                    log.exception("metrics scrape failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]  # type: ignore[return-value]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
