"""An archive in the test's own process: a FileStore and a SqliteIndex in a temporary
folder (the ``archive`` fixture), a Part 10 file ingested into it as a C-STORE would be,
and its compression jobs run until none is left."""

from __future__ import annotations

import io
import time

import pydicom
import pytest

from compacs.index import Duplicates
from compacs.index.sqlite import SqliteIndex
from compacs.ingest import Ingest, Received
from compacs.jobs.compress import Compressor
from compacs.rules import DEFAULT_POLICY
from compacs.storage import FileStore


@pytest.fixture(name="archive")
def fixture_archive(tmp_path):
    """``archive``: (store, index), a FileStore and a SqliteIndex under ``tmp_path``."""
    store = FileStore(tmp_path / "store")
    index = SqliteIndex(tmp_path / "index.sqlite")
    yield store, index
    index.close()


def ingest_file(store, index, data: bytes, policy=DEFAULT_POLICY) -> str:
    """The Part 10 file ``data`` ingested as its data set would arrive in a C-STORE (the
    file meta group dropped, PS3.10 7.1): its SOP Instance UID."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    raw = data[132 + 12 + int.from_bytes(data[140:144], "little") :]
    outcome = Ingest(store, index, Duplicates.KEEP_FIRST, policy).receive(
        Received(
            raw,
            str(ds.file_meta.TransferSyntaxUID),
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            "TEST",
            "COMPACS",
        )
    )
    assert outcome.ok, outcome
    return str(ds.SOPInstanceUID)


def run_jobs(store, index, policy=DEFAULT_POLICY):
    """Every compression job the index holds, claimed and processed: their results."""
    compressor = Compressor(store, index, policy)
    results = []
    while jobs := index.claim_jobs("test", 10, time.time() + 1e6):
        results += [compressor.process(j) for j in jobs]
    return results
