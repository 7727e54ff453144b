"""Which index a store (a directory, or a bucket prefix) belongs to.

An object store prefix holds the objects of one index: ``compacs verify --repair-orphans``
deletes every object its index does not reference, so a second index on the same prefix
lost all its objects (126 in the probe). At first use the store gets a marker naming its
index's identity (a UUID kept in the index, ``Index.identity()``); a node, ``verify`` and
``reindex`` refuse a store whose marker names another index. ``reindex`` rebuilds an index
that takes over the identity of the store it was rebuilt from.
"""

from __future__ import annotations

import json

from compacs.clock import utc_now
from compacs.storage.base import OWNER_KEY, BlobStore


class StoreOwned(RuntimeError):
    """The store belongs to another index."""


def owner_of(store: BlobStore) -> str | None:
    """The identity of the index the store belongs to, or None before its first use."""
    try:
        return str(json.loads(store.get(OWNER_KEY))["index"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreOwned(f"store {store.url}: unreadable {OWNER_KEY}: {exc}") from None


def claim(store: BlobStore, index_id: str) -> None:
    """Mark the store as ``index_id``'s at first use; raise StoreOwned if another's."""
    owner = owner_of(store)
    if owner is None:
        marker = {"index": index_id, "since": utc_now("seconds")}
        store.put(OWNER_KEY, json.dumps(marker).encode())
    elif owner != index_id:
        raise StoreOwned(
            f"store {store.url} belongs to another index ({owner}; this index is {index_id}): "
            "one store directory or bucket prefix per index; give this index its own "
            "(or rebuild it from this store with `compacs reindex`)"
        )
