"""Blob stores: where the DICOM files live, behind one small interface.

Backends are chosen by the scheme of a storage URL, from :data:`BACKENDS`; a new backend
(S3, ...) registers itself there and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from compacs.backends import open_by_scheme
from compacs.storage.base import BlobStore, StorageFull, validate_key
from compacs.storage.filesystem import FileStore
from compacs.storage.s3 import S3Store

BACKENDS: dict[str, Callable[[str], BlobStore]] = {
    "file": FileStore.from_url,
    "s3": S3Store.from_url,
}


def open_store(url: str) -> BlobStore:
    """Open the blob store named by ``url`` (``file:///abs/path``,
    ``s3://bucket/prefix?endpoint=...``)."""
    return open_by_scheme(url, BACKENDS, "storage")


__all__ = ["BACKENDS", "BlobStore", "FileStore", "StorageFull", "open_store", "validate_key"]
