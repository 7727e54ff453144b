"""A JPEG baseline YBR_FULL(_422) image made native (codecs/transcode.decompress): pixels
and Photometric Interpretation (PS3.3 C.7.6.3.1.2) kept together."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"])
def test_a_decompressed_ybr_jpeg_keeps_pixels_and_photometric_together(name):
    """A JPEG baseline YBR_FULL(_422) image made native (C-MOVE to an uncompressed-only
    peer, forwarding): its pixels are what its Photometric Interpretation says."""
    from pydicom.data import get_testdata_file

    from compacs.codecs.transcode import decompress

    path = get_testdata_file(name)
    expected = dcmread(path).pixel_array  # pydicom: RGB
    native = decompress(dcmread(path))
    assert not native.file_meta.TransferSyntaxUID.is_compressed
    error = np.abs(native.pixel_array.astype(int) - expected.astype(int)).max()
    assert error <= 2  # chroma upsampling differs by a rounding step between decoders
