"""Running compacs as a service: check-config, the systemd unit, metrics, JSON logs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from compacs import __version__
from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.node import ROOT, NodeProcess, echo, free_port, run_cli, write_config
from tests.support.scu import send_datasets


def test_check_config_accepts_the_example_and_names_what_is_wrong(tmp_path):
    good = run_cli("check-config", "--config", str(ROOT / "config" / "compacs.toml"))
    assert good.returncode == 0 and "OK" in good.stdout

    cases = {
        "[network]\nmax_pdu = 12\n": "[network] max_pdu = 12: expected 0 (unlimited)",
        '[security]\ntls_certificate = "/nonexistent.pem"\n': "tls_certificate",
        "[forwarding]\nbatch = 0\n": "[forwarding] batch = 0",
        '[[access]]\nae_title = "X"\nallow = ["delete"]\n': "allow must list some of",
        '[index]\nurl = "mysql://x/y"\n': "url 'mysql://x/y': unknown scheme",
    }
    for n, (text, message) in enumerate(cases.items()):
        path = write_config(tmp_path / f"bad{n}.toml", text)
        result = run_cli("check-config", "--config", str(path))
        assert result.returncode == 2, text
        assert str(path) in result.stderr and message in result.stderr, result.stderr

    # a certificate and a key that do not belong together
    cert, key = tmp_path / "a.pem", tmp_path / "b.key"
    for out, keyout in ((cert, tmp_path / "a.key"), (tmp_path / "b.pem", key)):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=x", "-keyout", str(keyout), "-out", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip
    path = write_config(
        tmp_path / "tls.toml", f'[security]\ntls_certificate = "{cert}"\ntls_key = "{key}"\n'
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2 and "TLS certificate, key or CA unusable" in result.stderr


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    unit = (ROOT / "systemd" / "compacs.service").read_text()
    for directive in (
        "User=compacs",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/compacs",
        "CapabilityBoundingSet=\n",
        "Restart=on-failure",
    ):
        assert directive in unit, directive
    # verify against this checkout's executable (the unit names /opt/compacs)
    local = tmp_path / "compacs.service"
    local.write_text(
        unit.replace("/opt/compacs/.venv/bin/compacs", str(ROOT / ".venv/bin/compacs"))
    )
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # the check notices a mistake (so an empty answer above means something)
    broken = tmp_path / "broken.service"
    broken.write_text(local.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert "strikt" in result.stderr


def metrics_text(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_counts_what_happens(node_factory, tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "metrics.toml",
        f'[node]\nlog_format = "json"\n[metrics]\nport = {port}\n[compression]\nwhen = "ingest"\n',
    )
    node = node_factory(config=config)
    series = list(ct_series(3, 512, 512, seed=12))  # > 10**6 bytes: seven digits or more
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 3
    m = metrics_text(port)
    assert m['compacs_stores_total{outcome="success"}'] == 3
    assert m["compacs_received_bytes_total"] >= sum(len(ds.PixelData) for ds in series)
    assert m['compacs_associations_total{outcome="established"}'] >= 2  # probe + store
    assert m["compacs_instances"] == 3 and m["compacs_compression_pending"] == 0
    assert m['compacs_compressions_total{result="compressed",syntax="1.2.840.10008.1.2.4.80"}'] == 3
    assert m["compacs_compression_seconds_total"] > 0
    assert m["compacs_stored_bytes"] < m["compacs_received_bytes"]
    # exact values: the received bytes are the index's own number, digit for digit
    stats = node.stats()
    assert m["compacs_received_bytes"] == stats["bytes_received"] > 10**6
    assert m['compacs_compression_instances{state="compressed"}'] == 3
    assert m["compacs_disk_free_bytes"] > 0
    assert m['compacs_build_info{version="' + __version__ + '"}'] == 1
    assert 0 < time.time() - m["process_start_time_seconds"] < 600
    # query/retrieve: counts and durations per service
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    for _ in range(2):
        assert [
            int(s.Status)
            for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ] == [0xFF00, 0]
    assoc.release()
    m = metrics_text(port)
    assert m['compacs_dimse_requests_total{outcome="completed",service="C-FIND"}'] == 2
    assert m['compacs_dimse_request_seconds_count{service="C-FIND"}'] == 2
    assert m['compacs_dimse_request_seconds_bucket{le="+Inf",service="C-FIND"}'] == 2
    # the listener is on 127.0.0.1 only
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{_other_address()}:{port}/metrics", timeout=2)

    # JSON logs: one object per line
    lines = [line for line in node.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any("listening" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def _other_address() -> str:
    """An address of this machine that is not loopback (or one that cannot answer)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = s.getsockname()[0]
        except OSError:
            address = "192.0.2.1"
    return "192.0.2.1" if address.startswith("127.") else address


def test_a_taken_dicom_port_is_named_in_one_line_and_exit_2(tmp_path):
    """The first day: a port another program holds gives a sentence, not a traceback."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            "serve", "--data-dir", str(tmp_path / "d"), "--host", "127.0.0.1",
            "--port", str(port), "--http-port", "0",
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen for DICOM on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    # and the data directory it did not keep is free for the next node
    result = run_cli("stats", "--data-dir", str(tmp_path / "d"), "--json")
    assert result.returncode == 0, result.stderr


def test_a_second_node_on_a_data_directory_in_use_is_refused(node_factory, tmp_path):
    first = node_factory("shared")
    second = NodeProcess(first.data_dir)
    result = subprocess.run(second.command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"data directory {first.data_dir} is in use by another compacs serve" in result.stderr
    assert f"pid {first.proc.pid}" in result.stderr
    assert echo(first.port) == 0  # the first node never noticed

    # a kill -9 leaves no stale lock: the kernel drops it with the process
    first.stop(signal.SIGKILL)
    assert node_factory("shared").is_running()
