"""Storage keys: where an object lives in a blob store, made from its UIDs and digest.

Objects are immutable (:mod:`compacs.storage.base`): a key names one content, so a
replacement or a compressed copy of an instance gets a new key, never the old one's.
"""

from __future__ import annotations

import hashlib
import re

# Keys are relative paths of safe components: no empty part, no '.' or '..', no
# separators other than '/', no characters a file system or object store may treat
# specially. compacs builds keys from validated UIDs; this is the second line of defence.
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_KEY_NAME = re.compile(r"(?P<uid>[0-9.]+)\.(?P<digest>[0-9a-f]{16})\.dcm")


def storage_key(study_uid: str, series_uid: str, sop_instance_uid: str, sha256: str) -> str:
    """Where an object lives: validated UIDs as path parts, a digest suffix for immutability.

    A two-hex-digit fan-out keeps the top directory small. The digest makes the key
    content-addressed per instance: a replacement or a compressed copy gets a new key,
    so the old object is never overwritten in place.
    """
    fan = hashlib.sha1(study_uid.encode("ascii")).hexdigest()[:2]
    return f"{fan}/{study_uid}/{series_uid}/{sop_instance_uid}.{sha256[:16]}.dcm"


def parse_key(key: str) -> tuple[str, str] | None:
    """(SOP Instance UID, SHA-256 prefix) of a key made by :func:`storage_key`, or None for
    any other name."""
    match = _KEY_NAME.fullmatch(key.rsplit("/", 1)[-1])
    return (match["uid"], match["digest"]) if match else None


def validate_key(key: str) -> str:
    """``key`` when every part of it is safe as a file or object name; ValueError otherwise."""
    parts = key.split("/")
    if not parts or any(not _KEY_PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise ValueError(f"unsafe storage key {key!r}")
    return key
