"""Workaround, contained here: transfer syntaxes pydicom 3.0 does not know.

pydicom 3.0.2's UID dictionary lacks the JPEG XL syntaxes (PS3.5 A.4.12, Supplement 232:
1.2.840.10008.1.2.4.110 / .111 / .112). For a UID it does not know, ``UID.is_transfer_syntax``
is False, so ``dcmwrite`` refuses the file ("The Transfer Syntax UID ... is not a valid
transfer syntax") and ``UID.is_compressed`` raises ("UID is not a transfer syntax"): an
object stored as JPEG XL could neither be written nor left (compacs issue 13, found by
``compacs compress`` with a CT rule changed to ``jpeg-xl``). Every encapsulated syntax is
Explicit VR Little Endian (PS3.5 A.4), so registering the missing UIDs as transfer syntaxes
is all pydicom needs to read and write their data sets; the pixel data is decoded by
compacs' codec table (``compacs.codecs.decode``), not by pydicom.

Remove this module once pydicom knows the UIDs (pydicom >= 3.1 lists JPEG XL).
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

from compacs.dicom.syntaxes import TRANSFER_SYNTAXES


def register_missing_transfer_syntaxes() -> list[str]:
    """Add every syntax of compacs' table that pydicom lacks to pydicom's UID dictionary;
    return the UIDs added (idempotent: none the second time)."""
    added = []
    for ts in TRANSFER_SYNTAXES:
        if ts.uid not in UID_dictionary:
            keyword = "".join(ch for ch in ts.name.title() if ch.isalnum())
            UID_dictionary[ts.uid] = (ts.name, "Transfer Syntax", "", "", keyword)
            added.append(ts.uid)
    return added
