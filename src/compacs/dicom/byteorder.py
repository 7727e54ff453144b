"""A data set read in Explicit VR Big Endian, made little endian with every value kept.

Explicit VR Big Endian (PS3.5 A.3, retired) encodes every multi-byte value most
significant byte first (PS3.5 7.3). When pydicom writes a big endian data set in a little
endian syntax it decodes the numbers it parses (US, SS, UL, SL, FL, FD, SV, UV, AT, in
sequences too) and encodes them again, but the values it keeps as bytes (OW, OF, OL, OD,
OV, the Pixel Data) it writes as they were read (``pydicom.filewriter.write_OWvalue``:
"does not currently do the byte swapping"), and pydicom 3 has no helper for it. A palette
or a segmented lookup table then changes value (PS3.3 C.7.6.3.1.5-6), and so do the
pixels. :func:`to_little_endian` swaps each such value by the size of the words its VR
(as written in the file) is made of, so that every element keeps its value.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

# PS3.5 6.2: the word each "other" VR is a stream of; OB and UN are byte streams
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
PIXEL_DATA = 0x7FE00010


def swap_words(value: bytes, size: int) -> bytes:
    """``value`` with the bytes of each ``size``-byte word reversed; an odd tail (a
    padding byte) stays where it is."""
    whole = len(value) - len(value) % size
    if size == 1 or whole == 0:
        return value
    words = np.frombuffer(value, dtype=f">u{size}", count=whole // size)
    return words.astype(f"<u{size}").tobytes() + value[whole:]


def pixel_data_word_bytes(ds: Dataset, vr: str) -> int:
    """How the native Pixel Data of ``ds`` is ordered in a big endian encoding.

    Samples of Bits Allocated 16, 32 or 64 are big endian integers of that size
    (PS3.5 8.1.1, A.3), whatever the VR says (pydicom reads OB that way too). Samples of
    8 bits or less are bytes, ordered as the VR says: OW is a stream of 16-bit words,
    so 8-bit samples in OW come in swapped pairs (as pydicom and DCMTK read them); OB is
    a stream of bytes.
    """
    bits = int(ds.get("BitsAllocated") or 0)
    if bits >= 16 and bits % 8 == 0:
        return bits // 8
    return WORD_BYTES.get(vr, 1)


def _to_little_endian(ds: Dataset) -> None:
    if ds.original_encoding[1] is not False:
        return  # not read as big endian: its values are little endian already
    for tag in list(ds.keys()):
        elem = ds[tag]  # a RawDataElement becomes a DataElement: numbers decoded
        if elem.VR == "SQ":
            for item in elem.value:
                _to_little_endian(item)
            continue
        if not isinstance(elem.value, bytes) or elem.is_undefined_length:
            continue  # decoded numbers, text, or encapsulated fragments (byte streams)
        if tag == PIXEL_DATA:
            size = pixel_data_word_bytes(ds, elem.VR)
        else:
            size = WORD_BYTES.get(elem.VR, 1)
        elem.value = swap_words(elem.value, size)
    ds.set_original_encoding(False, True)


def to_little_endian(ds: Dataset) -> bool:
    """Make ``ds``, read from an Explicit VR Big Endian encoding, an Explicit VR Little
    Endian data set in place, every element keeping its value (see the module docstring).

    Sequence items are converted too. Elements whose VR is UN keep their bytes: without a
    known VR nobody can tell their words (PS3.5 6.2.2). Returns whether ``ds`` was big
    endian.
    """
    if ds.original_encoding[1] is not False:
        return False
    _to_little_endian(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return True
