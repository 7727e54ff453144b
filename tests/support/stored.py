"""What a node under test stored, read from its SQLite index (index.sqlite in its data
folder): an instance's row and object, the stored transfer syntaxes, and waiting until
background compression has nothing pending."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def index_row(data_dir: Path, sop_instance_uid: str) -> tuple | None:
    """(storage key, syntax received, syntax stored, SHA-256) of an instance, or None."""
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return conn.execute(
            "SELECT storage_key, transfer_syntax_received, transfer_syntax_stored, sha256 "
            "FROM instances WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()


def stored_path(data_dir: Path, sop_instance_uid: str) -> Path:
    """The file the node stored for an instance (it must be indexed)."""
    row = index_row(data_dir, sop_instance_uid)
    assert row is not None, f"{sop_instance_uid} is not indexed"
    return data_dir / "store" / row[0]


def stored_syntaxes(data_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> the transfer syntax it is stored in, for every instance."""
    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return dict(conn.execute("SELECT sop_instance_uid, transfer_syntax_stored FROM instances"))


def wait_for_pending_zero(node, timeout: float = 120) -> dict:
    """The node's stats once no instance waits for compression (AssertionError after
    ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = node.stats()
        if stats["pending"] == 0:
            return stats
        time.sleep(0.2)
    raise AssertionError(f"pending did not reach 0: {stats}")
