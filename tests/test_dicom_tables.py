"""The DICOM fact tables: transfer syntaxes accepted for storage (PS3.5 10), storage SOP
classes (PS3.4 B.5), and the attributes indexed at each level (PS3.4 C.6.1.1)."""

from __future__ import annotations

from compacs.dicom.attributes import extract
from compacs.dicom.sop_classes import storage_sop_classes
from compacs.dicom.syntaxes import BY_UID, accepted_for_storage
from compacs.synthetic import ct_series


def test_every_stored_syntax_is_in_the_table_and_accepted():
    for uid in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.1.99"):
        assert uid in accepted_for_storage()
    assert (
        not BY_UID["1.2.840.10008.1.2.4.91"].lossless and BY_UID["1.2.840.10008.1.2.4.90"].lossless
    )
    classes = storage_sop_classes()
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT
    assert "1.2.840.10008.5.1.4.1.1.6" in classes  # retired US Image Storage


def test_extract_indexes_every_level():
    ds = next(ct_series(1, 16, 16, patient_id="PX1"))
    attrs = extract(ds)
    assert attrs["PATIENT"]["patient_id"] == "PX1"
    assert attrs["PATIENT"]["patient_name"] == "Synthetic^Phantom"
    assert attrs["STUDY"]["study_uid"] == ds.StudyInstanceUID
    assert attrs["SERIES"]["modality"] == "CT"
    assert attrs["IMAGE"]["bits_stored"] == 12 and attrs["IMAGE"]["rows"] == 16
