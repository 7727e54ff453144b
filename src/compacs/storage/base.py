"""The blob-store interface.

Objects are immutable: a key is written once, read many times and deleted; a changed
object (a compressed one, a replacement) gets a new key. ``put`` is durable when it
returns, so the index may reference the key and the sender may be told Success.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, cast


class StorageFull(OSError):
    """The backend has no room for the object (answered to senders as 0xA700)."""


OWNER_KEY = "compacs-owner.json"
"""The store's marker (storage/owner); never an instance's key, never listed by keys()."""


def parts_of(data: bytes | Sequence[bytes]) -> Sequence[bytes]:
    """``data`` as a sequence of parts (one part when it is a single buffer)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return [cast(bytes, data)]  # any buffer is one part
    return data


class BlobStore(Protocol):
    url: str

    def put(self, key: str, data: bytes | Sequence[bytes], *, settled: bool = True) -> None:
        """Store ``data`` (or its parts, joined in order: a received object is its File
        Meta header and the data set as received, never copied into one buffer) under
        ``key``; durable on return. Raises StorageFull when full. ``settled`` False: the
        object is likely to be replaced soon (an original waiting for its compression);
        a spooled store keeps it local until :meth:`settle` (storage/spool)."""

    def settle(self, key: str) -> None:
        """The object put with ``settled=False`` is final now (no-op for most stores)."""

    def forget(self, key: str) -> None:
        """The index kept another copy of this instance under the same ``key`` (the same
        bytes, stored by two writers at once): this writer's pending copy is not needed. A
        spool drops it; stores written in place keep it (it is the kept copy)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when absent."""

    def open(self, key: str) -> BinaryIO:
        """A binary file object for reading the object."""

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are ignored."""

    def exists(self, key: str) -> bool: ...

    def local_path(self, key: str) -> Path | None:
        """A file holding the object, for zero-copy sending, or None (remote stores)."""

    def size(self, key: str) -> int: ...

    def keys(self) -> Iterator[str]:
        """Every stored object's key (for verify and reindex), the marker excepted."""

    def recover(self) -> int:
        """Remove what an interrupted put left behind; return how many leftovers."""

    def close(self) -> None: ...

    def modified(self, key: str) -> float:
        """When the object was written (epoch seconds); FileNotFoundError when absent."""
