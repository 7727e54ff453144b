"""compacs: a DICOM archive node that stores every image in the smallest form that loses nothing."""

__version__ = "0.1.0"
