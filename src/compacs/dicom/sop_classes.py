"""Storage SOP classes the C-STORE SCP accepts (PS3.4 B.5).

pynetdicom's list of storage classes, plus every other storage SOP class in pydicom's UID
dictionary under the Storage Service Class root (1.2.840.10008.5.1.4), retired ones
included: archives still receive ultrasound and NM images from old modalities in the
retired classes, and refusing them loses data for no gain.
"""

from __future__ import annotations

import functools

from pydicom._uid_dict import UID_dictionary
from pynetdicom import sop_class as pynetdicom_sop_classes
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass

STORAGE_ROOT = "1.2.840.10008.5.1.4."


def _extra_storage_classes() -> dict[str, str]:
    """UID -> keyword of storage classes pydicom knows and pynetdicom does not."""
    known = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    extra = {}
    for uid, (name, kind, _info, retired, keyword) in UID_dictionary.items():
        is_storage = kind == "SOP Class" and "Storage" in name and uid.startswith(STORAGE_ROOT)
        if is_storage and uid not in known and keyword.isidentifier():
            extra[uid] = keyword + ("Retired" if retired and "Retired" not in keyword else "")
    return extra


@functools.cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class UID, registered with pynetdicom's Storage Service so that
    its C-STORE requests reach the handler instead of aborting the association."""
    extra = _extra_storage_classes()
    for uid, keyword in extra.items():
        if not hasattr(pynetdicom_sop_classes, keyword):
            pynetdicom_sop_classes.register_uid(uid, keyword, StorageServiceClass)
    known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return tuple(dict.fromkeys([*known, *extra]))
