"""The gateway in front of a real PACS: Orthanc (Debian's package) as the destination.

What arrived is checked over Orthanc's REST API: every instance, in the syntax compacs
negotiated (JPEG-LS lossless), pixels bit-exact; with Storage Commitment the queue
items are done only once Orthanc's report came, and the pure-gateway retention then
deletes the local copies.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom

from compacs.codecs.transcode import decompress
from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.forwarding import JLS, queue, wait_for
from tests.support.node import NodeProcess, free_port, write_config
from tests.support.orthanc import OrthancPeer
from tests.support.scu import send_datasets


def test_forward_to_orthanc_with_storage_commitment_and_retention(tmp_path):
    node = NodeProcess(tmp_path / "data")  # its port is needed in Orthanc's configuration
    orthanc = OrthancPeer(
        tmp_path / "orthanc",
        dicom_port=free_port(),
        http_port=free_port(),
        modalities={"COMPACS": (node.aet, "127.0.0.1", node.port)},  # where reports go
    )
    node.config = write_config(
        tmp_path / "gateway.toml",
        f'[[forwarding.rules]]\nto = "ORTHANC@127.0.0.1:{orthanc.dicom_port}"\n'
        'syntaxes = ["stored", "uncompressed"]\ncommit = true\nretain_days = 0\n',
    )
    series = list(ct_series(12, 128, 128, seed=90, patient_id="ORTHANC1"))
    orthanc.start()
    try:
        node.start()
        assert send_datasets(node.port, series) == [Status.SUCCESS] * 12
        orthanc.wait_until(12, timeout=60)
        # done only when Orthanc's commitment report arrived; then deleted locally
        wait_for(lambda: node.stats()["instances"] == 0, timeout=60, what="commit + retention")
        assert queue(node, "--all") == []  # the items went with their instances
        syntaxes = orthanc.transfer_syntaxes()
        assert syntaxes == {JLS: 12}
        files = orthanc.instance_files()
        assert "Storage Commitment report" in node.log()
    finally:
        node.stop()
        orthanc.stop()
    assert set(files) == {str(ds.SOPInstanceUID) for ds in series}
    exact = 0
    for ds in series:
        got = pydicom.dcmread(BytesIO(files[str(ds.SOPInstanceUID)]))
        assert got.file_meta.TransferSyntaxUID == JLS
        assert np.array_equal(decompress(got).pixel_array, ds.pixel_array)
        exact += 1
    print(
        f"\nOrthanc (REST): {len(files)} of {len(series)} instances, transfer syntax "
        f"{dict(syntaxes)}, {exact} bit-exact; committed, then deleted locally (retention)"
    )
