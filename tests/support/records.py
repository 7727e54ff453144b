"""Index records made straight from data sets, for tests that fill an index without a
node (the C-FIND matching tests and the patient-level fidelity tests)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from compacs.dicom.attributes import extract
from compacs.index import NewInstance

EXPLICIT = "1.2.840.10008.1.2.1"


def new_instance(ds: Dataset) -> NewInstance:
    """The index record of ``ds`` as if stored as received in Explicit VR Little Endian."""
    return NewInstance(
        attributes=extract(ds),
        storage_key=f"k/{ds.SOPInstanceUID}.dcm",
        transfer_syntax=EXPLICIT,
        bytes_received=100,
        bytes_stored=100,
        sha256="0" * 64,
        calling_ae="A",
        called_ae="COMPACS",
        received_at="2026-01-01T00:00:00+00:00",
    )
