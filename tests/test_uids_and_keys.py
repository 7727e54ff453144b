"""UIDs (PS3.5 9.1) and the storage keys built from them: valid, invalid, named in errors,
safe as path parts and content-addressed."""

from __future__ import annotations

import pytest

from compacs.dicom.uids import InvalidUID, is_valid_uid, require_uid
from compacs.storage import storage_key, validate_key


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.2.3." + "4" * 58, "1.2.0123"])
def test_valid_uids(uid):
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1.2.", ".1.2", "1..2", "1.2.a", "../1", "1/2", "1.2\x00", "1" * 65, None, 12]
)
def test_invalid_uids(uid):
    assert not is_valid_uid(uid)


def test_require_uid_names_the_attribute():
    with pytest.raises(InvalidUID, match=r"SeriesInstanceUID .* \(PS3.5 9.1"):
        require_uid("1.2.x", "SeriesInstanceUID")
    with pytest.raises(InvalidUID, match="StudyInstanceUID is missing"):
        require_uid(None, "StudyInstanceUID")


def test_storage_keys_are_safe_and_content_addressed():
    key = storage_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "ab" * 32)
    assert validate_key(key) == key
    assert key.endswith("/1.2.3/1.2.3.4/1.2.3.4.5.abababababababab.dcm")
    assert key != storage_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "cd" * 32)
    for bad in ("../x", "a/../b", "/abs", "a//b", ".hidden", "a/b\\c", "a/b\x00"):
        with pytest.raises(ValueError):
            validate_key(bad)
