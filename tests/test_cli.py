"""The command line contract: serve options, stats, config validation, clean stop."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import threading
import time

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.conftest import echo, run_cli, write_config
from tests.scu import association, send_datasets, status_of

STATS_KEYS = {
    "patients",
    "studies",
    "series",
    "instances",
    "bytes_received",
    "bytes_stored",
    "pending",
    "by_modality",
    "by_transfer_syntax",
}


def test_stats_json_has_the_documented_keys(plain_node):
    node = plain_node
    assert send_datasets(node.port, list(ct_series(3, 64, 64))) == [Status.SUCCESS] * 3
    stats = node.stats()
    assert set(stats) >= STATS_KEYS
    assert stats["instances"] == 3 and stats["pending"] == 0
    assert set(stats["by_transfer_syntax"][ExplicitVRLittleEndian]) >= {
        "name",
        "instances",
        "bytes_received",
        "bytes_stored",
        "ratio",
    }
    human = node.cli("stats")
    assert human.returncode == 0
    assert "instances 3" in human.stdout and "Explicit VR Little Endian" in human.stdout


def test_stats_on_an_empty_data_dir_says_so(tmp_path):
    result = run_cli("stats", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "no index" in result.stderr


def test_command_line_overrides_the_config_file(node_factory, tmp_path):
    config = write_config(
        tmp_path / "c.toml",
        '[node]\nae_title = "FROMFILE"\nport = 1\n'
        '[[peers]]\nae_title = "A"\nhost = "h"\nport = 5\n',
    )
    node = node_factory(config=config, aet="FROMCLI", extra_args=("--peer", "B@127.0.0.1:4242"))
    assert echo(node.port, "FROMCLI") == Status.SUCCESS
    assert echo(node.port, "FROMFILE") is None  # association rejected: called AE unknown


def test_config_errors_name_the_file_key_and_expectation(tmp_path):
    cases = {
        '[node]\nport = "eleven"\n': ("[node] port", "a TCP port"),
        "[node]\nae_title = 'ÄÖÜ-THIS-IS-FAR-TOO-LONG'\n": ("[node] ae_title", "AE title"),
        '[ingest]\nduplicates = "maybe"\n': ("[ingest] duplicates", "'keep-first' or 'replace'"),
        "[nodes]\nport = 1\n": ("unknown section [nodes]", "known:"),
        "[node]\nprot = 1\n": ("unknown key 'prot'", "known:"),
        "[node\n": ("not valid TOML", ""),
        '[[peers]]\nae_title = "X"\nhost = "h"\n': ("[[peers]] #1", "ae_title, host, port"),
    }
    for n, (text, (where, expected)) in enumerate(cases.items()):
        path = write_config(tmp_path / f"bad{n}.toml", text)
        result = run_cli("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))
        assert result.returncode == 2, text
        assert str(path) in result.stderr and where in result.stderr, result.stderr
        assert expected in result.stderr


def test_bad_peer_option_is_a_usage_error(tmp_path):
    result = run_cli("serve", "--peer", "nohostport", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "AET@HOST:PORT" in result.stderr


def test_sigterm_during_ingest_loses_nothing_acknowledged(node_factory):
    """SIGTERM while a modality is sending: every Success is on disk and indexed, nothing
    is half-written, the process exits 0, and after a restart the rest can be sent."""
    node = node_factory()
    series = list(ct_series(60, 256, 256, seed=9))
    acknowledged: list[str] = []
    failed: list[str] = []

    def sender() -> None:
        try:
            # a short DIMSE timeout: pynetdicom's SCU may wait that long for a response
            # that an aborted association will never bring
            contexts = [(CTImageStorage, ExplicitVRLittleEndian)]
            with association(node.port, contexts, timeout=5) as assoc:
                for ds in series:
                    if not assoc.is_established:
                        break
                    status = status_of(assoc.send_c_store(ds))
                    (acknowledged if status == Status.SUCCESS else failed).append(
                        str(ds.SOPInstanceUID)
                    )
        except (AssertionError, RuntimeError, OSError):
            pass

    thread = threading.Thread(target=sender)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.stop(signal.SIGTERM) == 0
    thread.join(60)
    assert 15 <= len(acknowledged) < 60
    assert "compacs stopped" in node.log()

    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        rows = dict(conn.execute("SELECT sop_instance_uid, storage_key FROM instances"))
        digests = dict(conn.execute("SELECT storage_key, sha256 FROM instances"))
    assert set(acknowledged) <= set(rows)  # every Success is indexed...
    files = {
        p.relative_to(node.data_dir / "store").as_posix()
        for p in (node.data_dir / "store").rglob("*.dcm")
    }
    assert files == set(rows.values())  # ...on disk, and nothing else is
    for key, digest in digests.items():
        assert hashlib.sha256((node.data_dir / "store" / key).read_bytes()).hexdigest() == digest
    assert list((node.data_dir / "store" / ".tmp").iterdir()) == []

    node.start()
    remaining = [ds for ds in series if str(ds.SOPInstanceUID) not in rows]
    assert send_datasets(node.port, remaining) == [Status.SUCCESS] * len(remaining)
    assert node.stats()["instances"] == 60
    assert json.loads(node.cli("stats", "--json").stdout)["series"] == 1
