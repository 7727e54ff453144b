"""Prometheus metrics on ``/metrics``: counters the services increment, histograms of DIMSE
request durations, and gauges read from the index and the disk at scrape time.

Built on ``prometheus-client``, the ecosystem's own library: exact sample values (the
hand-written exposition this replaces printed ``2.87666e+07`` for 28766620 bytes), the
standard process metrics (CPU, memory, start time, open files), and the text format
Prometheus and its scrapers expect, maintained upstream.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from compacs import __version__

log = logging.getLogger(__name__)

# ``_created`` samples per counter double the output and help no dashboard
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry()
"""compacs's own registry: what one node exposes, nothing a library registered globally."""
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, _resident_memory_bytes, ...
Info("compacs_build", "The running compacs.", registry=REGISTRY).info({"version": __version__})


class LabelledCounter:
    """A counter incremented as ``COUNTER.inc(amount, label=value, ...)``."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self._counter = Counter(name, help_text, labels, registry=REGISTRY)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._counter.labels(**labels) if labels else self._counter).inc(amount)


# prometheus-client appends _total to counter names
ASSOCIATIONS = LabelledCounter("compacs_associations", "Associations by outcome.", ("outcome",))
STORES = LabelledCounter("compacs_stores", "C-STORE requests by status category.", ("outcome",))
BYTES_RECEIVED = LabelledCounter("compacs_received_bytes", "Bytes of data sets received.")
CODEC_SECONDS = LabelledCounter(
    "compacs_compression_seconds", "Seconds spent compressing (encode and verify)."
)
CODEC_RUNS = LabelledCounter(
    "compacs_compressions", "Compression jobs by result and syntax.", ("result", "syntax")
)
DIMSE_REQUESTS = LabelledCounter(
    "compacs_dimse_requests",
    "C-FIND, C-MOVE and C-GET requests by service and how they ended.",
    ("service", "outcome"),
)
DIMSE_SECONDS = Histogram(
    "compacs_dimse_request_seconds",
    "Duration of C-FIND, C-MOVE and C-GET requests, from request to final response.",
    ("service",),
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)


class _IndexCollector(Collector):
    """Gauges read at scrape time: the index's ``stats()`` document and the disk."""

    def __init__(self, stats: Callable[[], dict[str, Any]], disk: Path | None) -> None:
        self.stats = stats
        self.disk = disk

    def describe(self) -> list[Metric]:
        return []  # names are known only from the index; no duplicate check needed

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.stats()
        for name, help_text, key in (
            ("compacs_instances", "Instances stored.", "instances"),
            ("compacs_stored_bytes", "Bytes stored.", "bytes_stored"),
            ("compacs_received_bytes", "Bytes as received, of those stored.", "bytes_received"),
            ("compacs_compression_pending", "Compression queue length.", "pending"),
        ):
            yield GaugeMetricFamily(name, help_text, value=s[key])
        states = GaugeMetricFamily(
            "compacs_compression_instances", "Instances per compression state.", labels=["state"]
        )
        for state, n in sorted((s.get("compression") or {}).items()):
            states.add_metric([str(state)], n)
        yield states
        forwards = GaugeMetricFamily(
            "compacs_forward_items", "Forwarding queue items.", labels=["destination", "state"]
        )
        for destination, entry in sorted(s.get("forwarding", {}).items()):
            for state, n in sorted(entry.items()):
                if state != "bytes_sent":
                    forwards.add_metric([destination, state], n)
        yield forwards
        if self.disk is not None:
            usage = shutil.disk_usage(self.disk)
            yield GaugeMetricFamily(
                "compacs_disk_free_bytes", "Free bytes on the data directory's disk.", usage.free
            )


class MetricsServer:
    """``GET /metrics`` on its own port (127.0.0.1 by default), in a daemon thread."""

    def __init__(
        self, host: str, port: int, stats: Callable[[], dict[str, Any]], disk: Path | None = None
    ) -> None:
        collector = _IndexCollector(stats, disk)
        REGISTRY.register(collector)
        self._collector = collector

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = generate_latest(REGISTRY)
                except Exception:
                    log.exception("metrics scrape failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError:
            REGISTRY.unregister(collector)
            raise
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]  # typeshed: str | bytes host (AF_UNIX)
        return str(host), port

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        REGISTRY.unregister(self._collector)
