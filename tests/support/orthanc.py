"""Orthanc on 127.0.0.1: a benchmark peer, and a real downstream PACS for the gateway.

The benchmark suite compares compacs with the other archives a site might run
instead; the forwarding tests deliver to it and check what arrived over its REST API.
:class:`OrthancPeer` starts one private Orthanc server (Debian package
``orthanc``, binary ``/usr/sbin/Orthanc``, 1.10.1 when this was written) from a
JSON configuration written into a working directory, waits until both its REST API
and its DICOM server answer, and reads what it stored back through the REST API
using only the standard library::

    peer = OrthancPeer(workdir, dicom_port=4242, http_port=8042,
                       ingest_transcoding="1.2.840.10008.1.2.4.80",
                       modalities={"BENCH": ("BENCH", "127.0.0.1", 11112)})
    peer.start()
    try:
        ...  # storescu / findscu / movescu against 127.0.0.1:4242
        peer.wait_until(200, timeout=60)
        print(peer.instance_count(), peer.stored_bytes(), peer.transfer_syntaxes())
        peer.reset()  # empty it for the next run
    finally:
        peer.stop()

It is also a context manager (``with OrthancPeer(...) as peer:``).

Facts this relies on (checked with Orthanc 1.10.1 and DCMTK 3.6.7):

* Orthanc links the system DCMTK, so its DICOM server needs ``TCP_NODELAY=1`` in its
  environment, like every DCMTK tool: without it Nagle's algorithm adds about 40 ms
  to each DIMSE message. The same goes for the ``echoscu`` used to probe it.
* C-ECHO and C-STORE are accepted from any calling AE (``DicomAlwaysAllowEcho`` and
  ``DicomAlwaysAllowStore`` default to true), but C-FIND, C-GET and C-MOVE only from
  AEs listed in ``DicomModalities`` (``DicomAlwaysAllowFind``, ``DicomAlwaysAllowGet``
  and ``DicomAlwaysAllowMove`` default to false and are kept so), and a C-MOVE
  destination must be listed there too, since that is where Orthanc finds its host and
  port. Each entry of ``modalities`` is therefore written in the object form with
  ``AllowEcho``/``AllowStore``/``AllowFind``/``AllowGet``/``AllowMove`` set (they all
  default to true, so the plain ``[AET, host, port]`` form behaves the same). Beware that
  DCMTK ``findscu`` and ``movescu`` exit with status 0 when Orthanc refuses them: check
  the answers or the delivered files, not the exit status.
* ``DicomCheckCalledAet`` is on: associations addressed to another AET are rejected.
* :meth:`stop` takes about 3 s: Orthanc 1.10 needs that long to shut its servers down.
* ``"IngestTranscoding": "1.2.840.10008.1.2.4.80"`` (JPEG-LS lossless) works with the
  built-in DCMTK codecs. JPEG 2000 needs the ``orthanc-gdcm`` plugin; without it Orthanc
  silently stores the original syntax. No plugin is loaded here (``"Plugins": []``), so
  check :meth:`OrthancPeer.transfer_syntaxes` when asking for anything else.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: Where Debian's ``orthanc`` package installs the server.
ORTHANC_BINARY = "/usr/sbin/Orthanc"


DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def find_orthanc() -> str:
    """Return the path of the Orthanc server binary, or raise ``FileNotFoundError``."""
    for candidate in (ORTHANC_BINARY, shutil.which("Orthanc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("Orthanc not found: install the Debian package 'orthanc'")


class OrthancError(RuntimeError):
    """Orthanc did not start, answer or stop as expected."""


class OrthancPeer:
    """One private Orthanc server on 127.0.0.1, configured and owned by this object.

    ``workdir`` receives the configuration (``orthanc.json``), the log (``orthanc.log``)
    and the ``storage/`` and ``index/`` folders. ``modalities`` maps an Orthanc name to
    ``(AET, host, port)`` for every remote AE that queries or retrieves (C-FIND, C-GET,
    C-MOVE) and every C-MOVE destination. ``ingest_transcoding`` is a transfer syntax
    UID every received instance is transcoded to before it is stored.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        dicom_port: int,
        http_port: int,
        ingest_transcoding: str | None = None,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        dicomweb: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.ingest_transcoding = ingest_transcoding
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._base_url = f"http://127.0.0.1:{http_port}"
        # No proxy, ever: the peer is on the loopback interface.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- configuration -----------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration that :meth:`start` writes, as a dictionary."""
        config: dict[str, Any] = {
            "Name": f"bench-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": [],  # self-contained: nothing from /usr/share/orthanc/plugins
            "ConcurrentJobs": 2,  # Orthanc's own default, written out to be explicit
            "SaveJobs": False,  # nothing to resume when the next run starts
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # REST API for 127.0.0.1 only
            "AuthenticationEnabled": False,
            "TcpNoDelay": True,  # HTTP server side; DICOM needs TCP_NODELAY=1 (see start)
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,  # refuse associations addressed to another AET
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,  # only the AEs in DicomModalities below
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": {
                name: {
                    "AET": aet,
                    "Host": host,
                    "Port": port,
                    "AllowEcho": True,
                    "AllowStore": True,
                    "AllowFind": True,
                    "AllowGet": True,
                    "AllowMove": True,
                }
                for name, (aet, host, port) in self.modalities.items()
            },
            # Only used by Lua-initiated associations in 1.10, but keep none lingering.
            "DicomAssociationCloseDelay": 0,
        }
        if self.ingest_transcoding:
            config["IngestTranscoding"] = self.ingest_transcoding
        if self.dicomweb:  # Debian's orthanc-dicomweb, the DICOMweb peer (issue 17)
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        return config

    # -- process -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The DICOM port (same as ``dicom_port``; the other bench servers call it so)."""
        return self.dicom_port

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None`` when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def exit_code(self) -> int | None:
        """The exit status of a server that has died (negative: the signal that killed it,
        e.g. -6 for the SIGABRT of an aborting encoder), None while it runs or after
        :meth:`stop`."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = 60) -> None:
        """Write the configuration, start Orthanc and wait until REST and C-ECHO answer."""
        if self.pid is not None:
            raise OrthancError("Orthanc is already running")
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        (self.workdir / "index").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        env = {**os.environ, "TCP_NODELAY": "1"}  # mandatory, see the module docstring
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [find_orthanc(), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        try:
            self._wait_ready(deadline, env)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float, env: dict[str, str]) -> None:
        rest_ok = False
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise OrthancError(f"Orthanc exited during start-up:\n{self.log_tail()}")
            if not rest_ok:
                try:
                    self._get("/system", timeout=2)
                    rest_ok = True
                except (OSError, urllib.error.URLError):
                    pass
            if rest_ok:
                echo = subprocess.run(
                    ["echoscu", "-to", "5", "-aec", self.aet, "127.0.0.1", str(self.dicom_port)],
                    env=env,
                    capture_output=True,
                    timeout=30,
                )
                if echo.returncode == 0:
                    return
            time.sleep(0.1)
        raise OrthancError(
            f"Orthanc did not answer REST and C-ECHO in time (REST ok: {rest_ok}):\n"
            + self.log_tail()
        )

    def stop(self, timeout: float = 30) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> OrthancPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST API ----------------------------------------------------------------------

    def _request(self, method: str, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self._base_url + path, method=method)
        with self._opener.open(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body.strip() else None

    def _get(self, path: str, timeout: float = 30) -> Any:
        return self._request("GET", path, timeout)

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics``: counts and disk sizes of what is stored."""
        return self._get("/statistics")

    def instance_count(self) -> int:
        """Number of stored instances (``CountInstances``)."""
        return int(self.statistics()["CountInstances"])

    def stored_bytes(self) -> int:
        """Bytes on disk for the stored files (``TotalDiskSize``, a string in 1.10)."""
        return int(self.statistics()["TotalDiskSize"])

    def wait_until(self, count: int, timeout: float = 60, interval: float = 0.05) -> float:
        """Poll until at least ``count`` instances are stored; return the seconds waited.

        Raises :class:`TimeoutError` with the last count when ``timeout`` runs out.
        """
        start = time.monotonic()
        while True:
            current = self.instance_count()
            if current >= count:
                return time.monotonic() - start
            if time.monotonic() - start >= timeout:
                raise TimeoutError(f"Orthanc holds {current} instances, expected {count}")
            time.sleep(interval)

    def instance_sizes(self) -> dict[str, int]:
        """Bytes on disk of each stored instance (``/instances/{id}/statistics``
        ``DiskSize``), by SOP Instance UID."""
        sizes = {}
        for instance_id in self._get("/instances"):
            uid = self._get(f"/instances/{instance_id}")["MainDicomTags"]["SOPInstanceUID"]
            sizes[uid] = int(self._get(f"/instances/{instance_id}/statistics")["DiskSize"])
        return sizes

    def transfer_syntaxes(self) -> collections.Counter[str]:
        """How many stored instances have each transfer syntax UID.

        Orthanc 1.10 keeps the syntax as the ``TransferSyntax`` metadata of each instance
        (``/instances?expand`` does not carry it), so this makes one request per instance.
        """
        counts: collections.Counter[str] = collections.Counter()
        for instance_id in self._get("/instances"):
            request = urllib.request.Request(
                f"{self._base_url}/instances/{instance_id}/metadata/TransferSyntax"
            )
            with self._opener.open(request, timeout=30) as response:
                counts[response.read().decode().strip()] += 1
        return counts

    def instance_files(self) -> dict[str, bytes]:
        """Every stored instance as Orthanc gives it back (``/instances/{id}/file``), by
        SOP Instance UID."""
        files = {}
        for instance_id in self._get("/instances"):
            uid = self._get(f"/instances/{instance_id}")["MainDicomTags"]["SOPInstanceUID"]
            request = urllib.request.Request(f"{self._base_url}/instances/{instance_id}/file")
            with self._opener.open(request, timeout=30) as response:
                files[uid] = response.read()
        return files

    def reset(self) -> None:
        """Delete every patient (and so every instance) so the server can be reused."""
        for patient_id in self._get("/patients"):
            self._request("DELETE", f"/patients/{patient_id}", timeout=60)
        remaining = self.instance_count()
        if remaining:
            raise OrthancError(f"{remaining} instances left after reset")
