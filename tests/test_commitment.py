"""Storage Commitment Push Model (PS3.4 Annex J) with pynetdicom SCUs."""

from __future__ import annotations

import sqlite3
import threading

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.conftest import NO_COMPRESSION, free_port, write_config
from tests.scu import send_datasets

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def reference(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def request(transaction: str, refs: list[Dataset]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.ReferencedSOPSequence = refs
    return ds


def report_collector():
    """An EVT_N_EVENT_REPORT handler, the reports it received, and an Event set on one."""
    reports: list[tuple[int, Dataset]] = []
    arrived = threading.Event()

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        arrived.set()
        return 0x0000, None

    return on_report, reports, arrived


def stored(node, n: int = 3) -> list[str]:
    series = list(ct_series(n, 32, 32, seed=77))
    assert send_datasets(node.port, series) == [Status.SUCCESS] * n
    return [str(ds.SOPInstanceUID) for ds in series]


def test_commitment_report_on_the_same_association(node):
    uids = stored(node)
    on_report, reports, arrived = report_collector()

    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1",
        node.port,
        ae_title=node.aet,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    refs = [
        reference(CTImageStorage, uids[0]),
        reference(CTImageStorage, uids[1]),
        reference(CTImageStorage, "1.2.3.4.5.6.7"),  # never stored
        reference(MRImageStorage, uids[2]),
    ]  # stored, but as CT
    status, _ = assoc.send_n_action(
        request("1.2.3.99", refs), 1, StorageCommitmentPushModel, WELL_KNOWN
    )
    assert status.Status == 0x0000
    assert arrived.wait(15)
    assoc.release()
    event_type, info = reports[0]
    assert event_type == 2  # some failures
    assert info.TransactionUID == "1.2.3.99"
    assert {r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence} == set(uids[:2])
    reasons = {r.ReferencedSOPInstanceUID: r.FailureReason for r in info.FailedSOPSequence}
    assert reasons == {"1.2.3.4.5.6.7": 0x0112, uids[2]: 0x0119}


def test_commitment_report_on_a_new_association_and_a_corrupt_file(node_factory, tmp_path):
    port = free_port()
    # compression off: a compression job could replace the object damaged below
    node = node_factory(
        config=write_config(tmp_path / "plain.toml", NO_COMPRESSION),
        extra_args=("--peer", f"COMMITSCU@127.0.0.1:{port}"),
    )
    uids = stored(node, 2)
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        (key,) = conn.execute(
            "SELECT storage_key FROM instances WHERE sop_instance_uid = ?", (uids[1],)
        ).fetchone()
    path = node.data_dir / "store" / key
    damaged = bytearray(path.read_bytes())
    damaged[-10] ^= 0xFF  # silent corruption on disk
    path.write_bytes(bytes(damaged))

    on_report, reports, arrived = report_collector()

    listener = AE(ae_title="COMMITSCU")
    # the archive takes the SCP role on this association (PS3.4 J.3.3.1)
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        ae = AE(ae_title="COMMITSCU")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.aet)
        refs = [reference(CTImageStorage, u) for u in uids]
        status, _ = assoc.send_n_action(
            request("1.2.3.100", refs), 1, StorageCommitmentPushModel, WELL_KNOWN
        )
        assoc.release()  # gone before the report: it must come on a new association
        assert status.Status == 0x0000
        assert arrived.wait(15)
    finally:
        server.shutdown()
    event_type, info = reports[0]
    assert event_type == 2
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [uids[0]]
    (failure,) = info.FailedSOPSequence
    assert failure.ReferencedSOPInstanceUID == uids[1] and failure.FailureReason == 0x0110
