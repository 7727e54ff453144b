"""The command line contract: serve options, stats, config validation, clean stop."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.dcmtk import require_dcmtk
from tests.support.node import NO_COMPRESSION, ROOT, echo, run_cli, write_config
from tests.support.scu import association, send_datasets, status_of

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


# -- the progress bar on a terminal: one line per problem, warnings once --------------------
BAR = re.compile(r"\[[#.]{30}\] \d+/\d+ \d+/s( saved [0-9.]+ MiB)?( problems \d+)?")


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """``compacs ARGS`` with stderr on a pseudo-terminal, as an admin sees it: the
    progress bar is live (it draws in place only on a TTY). (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "compacs", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=300)
    finally:
        reader.join(60)
        os.close(master)
    terminal = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, stdout.decode(errors="replace"), terminal


def screen_lines(terminal: str) -> list[str]:
    """What stays on screen: per line, the text after the last carriage return."""
    return [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in terminal.split("\n")]


def padded(ds):
    """``ds`` with 128 bytes of padding after its pixel data: pydicom warns about it
    (PS3.5 8.1.1) on every decode, once per object."""
    ds.PixelData = ds.PixelData + b"\x00" * 128
    return ds


def broken_jpeg_ls(node, uid: str) -> Path:
    """Damage the stored JPEG-LS stream of ``uid`` after its SOF (as a bad encoder would;
    the index's SHA-256 follows) so that no decoder reads it; its path."""
    index = node.data_dir / "index.sqlite"
    with closing(sqlite3.connect(index)) as conn:
        (key,) = conn.execute(
            "SELECT storage_key FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
    path = node.data_dir / "store" / key
    original = path.read_bytes()
    sof = original.find(b"\xff\xd8\xff\xf7")  # JPEG-LS SOI + SOF55
    assert sof > 0
    broken = original[: sof + 4] + b"\xff" * 12 + original[sof + 16 :]
    path.write_bytes(broken)
    with closing(sqlite3.connect(index)) as conn, conn:
        conn.execute(
            "UPDATE instances SET sha256 = ? WHERE sop_instance_uid = ?",
            (hashlib.sha256(broken).hexdigest(), uid),
        )
    return path


def assert_clean_terminal(terminal: str) -> None:
    """The bar is live and nothing is written into it; no traceback."""
    assert re.search(r"\r(\x1b\[K)?\[[#.]{30}\]", terminal), terminal  # redrawn in place: live
    assert "Traceback" not in terminal, terminal
    for line in screen_lines(terminal):
        bar = BAR.search(line)
        assert bar is None or bar.group(0) == line.strip(), line  # a bar alone on its line


def test_verify_and_compress_on_a_terminal_print_problems_as_lines_and_warnings_once(
    node_factory, tmp_path
):
    """A store with an undecodable JPEG-LS object and three objects whose pixel data is
    padded (pydicom warns on each decode): ``verify`` and ``compress`` on a terminal name
    the failed object and why, one line each, count the warning once, never a traceback."""
    require_dcmtk()
    node = node_factory(config=write_config(tmp_path / "off.toml", NO_COMPRESSION))
    series = list(ct_series(5, 64, 64, seed=44))
    for ds in series[:3]:
        padded(ds)
    series[3].compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    assert send_datasets(node.port, series) == [Status.SUCCESS] * 5
    victim = str(series[3].SOPInstanceUID)
    path = broken_jpeg_ls(node, victim)
    # the independent reader agrees the object does not decode
    dcmdjpls = subprocess.run(
        ["dcmdjpls", str(path), str(tmp_path / "out.dcm")], capture_output=True, text=True
    )
    assert dcmdjpls.returncode != 0, dcmdjpls.stdout

    data = ("--data-dir", str(node.data_dir))
    code, stdout, terminal = run_on_terminal("verify", *data)
    assert code == 1, stdout + terminal
    assert_clean_terminal(terminal)
    assert "5/5" in terminal
    assert terminal.count("excess padding") == 1, terminal  # once, as a counted kind
    assert re.search(r"3x pydicom: The pixel data is \d+ bytes long", terminal), terminal
    (line,) = [line for line in stdout.splitlines() if line.strip().startswith("undecodable")]
    assert victim in line and "pixel data does not decode: NotDecodable: " in line
    why = line.split("pixel data does not decode: ", 1)[1][:100]
    summary = next(line for line in stdout.splitlines() if "problem(s):" in line)
    assert summary.startswith("1 problem(s): undecodable 1 (1x pixel data does not decode")
    assert why in summary  # the summary says why, as the object's own line does
    code, _, verbose = run_on_terminal("verify", "-v", *data)  # in full, as they come
    assert code == 1 and verbose.count("UserWarning: The pixel data is") == 3, verbose

    policy = write_config(
        tmp_path / "j2k.toml",
        '[compression]\nwhen = "off"\n[[compression.rules]]\naction = "jpeg-2000"\n',
    )
    code, stdout, terminal = run_on_terminal("compress", "--config", str(policy), *data)
    assert code == 3, stdout + terminal  # 3: some instance failed
    assert_clean_terminal(terminal)
    assert terminal.count("excess padding") == 1, terminal
    assert re.search(r"3x pydicom: The pixel data is \d+ bytes long", terminal), terminal
    failure_lines = [line for line in screen_lines(terminal) if "could not compress" in line]
    assert len(failure_lines) == 1 and victim in failure_lines[0], terminal
    assert "jpeg-2000: NotDecodable: " in failure_lines[0]
    why = failure_lines[0].split("jpeg-2000: NotDecodable: ", 1)[1][:60]
    summary = next(line for line in stdout.splitlines() if line.startswith("compressed "))
    assert summary.startswith("compressed 4, derived lossy 0, kept 0, skipped 0, failed 1 ")
    assert "; failed: 1x jpeg-2000: NotDecodable: " + why in summary, summary
    assert node.stats()["compression"]["failed"] == 1
