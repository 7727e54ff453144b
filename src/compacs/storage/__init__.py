"""Blob stores: where the DICOM files live, behind one small interface.

Backends are chosen by the scheme of a storage URL, from :data:`BACKENDS`; a new backend
(S3, ...) registers itself there and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compacs.backends import open_by_scheme
from compacs.storage.base import BlobStore, StorageFull
from compacs.storage.filesystem import FileStore
from compacs.storage.keys import parse_key, storage_key, validate_key
from compacs.storage.s3 import S3Store
from compacs.storage.spool import UPLOADERS, SpooledStore

BACKENDS: dict[str, Callable[[str], BlobStore]] = {
    "file": FileStore.from_url,
    "s3": S3Store.from_url,
}


def open_store(
    url: str, spool: Path | None = None, *, hold: float = 30.0, uploaders: int = UPLOADERS
) -> BlobStore:
    """Open the blob store named by ``url`` (``file:///abs/path``,
    ``s3://bucket/prefix?endpoint=...``); a remote one behind a local ``spool`` directory
    when given (:class:`SpooledStore`: ``uploaders`` 0 for a tool beside a running node)."""
    store = open_by_scheme(url, BACKENDS, "storage")
    if spool is None or isinstance(store, FileStore):
        return store
    return SpooledStore(store, spool, hold=hold, uploaders=uploaders)


__all__ = [
    "BACKENDS",
    "BlobStore",
    "FileStore",
    "SpooledStore",
    "StorageFull",
    "open_store",
    "parse_key",
    "storage_key",
    "validate_key",
]
