"""DICOM vocabulary shared by every part of compacs: transfer syntaxes, UIDs, statuses."""

from compacs.dicom.pydicom_compat import register_missing_transfer_syntaxes

register_missing_transfer_syntaxes()  # JPEG XL for pydicom 3.0: see pydicom_compat
