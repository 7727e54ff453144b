"""DICOM vocabulary shared by every part of compacs: transfer syntaxes, UIDs, statuses."""
