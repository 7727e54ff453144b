"""Storage Commitment Push Model (PS3.4 Annex J) with pynetdicom SCUs."""

from __future__ import annotations

import sqlite3
import threading

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel

from compacs.dicom.status import Status
from compacs.synthetic import ct_series
from tests.support.node import NO_COMPRESSION, free_port, write_config
from tests.support.scu import send_datasets

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


ACCESS = """
[[access]]
ae_title = "ECHOSCU"
allow = ["echo"]

[[access]]
ae_title = "MODALITY"
allow = ["echo", "store", "commit"]

[[access]]
ae_title = "OTHER"
allow = ["echo", "store"]

[[access]]
ae_title = "ARCHIVIST"
allow = ["echo", "find", "commit"]
"""


def _commit(port: int, calling: str, transaction: str, refs: list[Dataset]):
    """(N-ACTION status, the report or None) for ``calling`` asking on one association."""
    on_report, reports, arrived = report_collector()
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="COMPACS", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(
            request(transaction, refs), 1, StorageCommitmentPushModel, WELL_KNOWN
        )
        got = arrived.wait(15) if status.Status == 0 else False
    finally:
        assoc.release()
    return int(status.Status), (reports[0][1] if got else None)


def test_commitment_tells_an_ae_only_of_what_it_may_see(node_factory, tmp_path):
    node = node_factory(config=write_config(tmp_path / "access.toml", ACCESS))
    mine, theirs = list(ct_series(2, 32, 32, seed=78)), list(ct_series(2, 32, 32, seed=79))
    assert send_datasets(node.port, mine, calling="MODALITY") == [Status.SUCCESS] * 2
    assert send_datasets(node.port, theirs, calling="OTHER") == [Status.SUCCESS] * 2
    refs = [reference(CTImageStorage, str(ds.SOPInstanceUID)) for ds in mine + theirs]

    # MODALITY may not C-FIND: it learns of its own instances only; OTHER's are unknown
    status, info = _commit(node.port, "MODALITY", "1.2.3.200", refs)
    assert status == 0 and info is not None
    assert {r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence} == {
        str(ds.SOPInstanceUID) for ds in mine
    }
    assert {r.FailureReason for r in info.FailedSOPSequence} == {0x0112}
    # ARCHIVIST may C-FIND everything, so it may ask about everything
    status, info = _commit(node.port, "ARCHIVIST", "1.2.3.201", refs)
    assert status == 0 and len(info.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in info
    # OTHER may not use Storage Commitment at all: 0x0124
    assert _commit(node.port, "OTHER", "1.2.3.202", refs)[0] == 0x0124


def test_a_storage_commitment_report_needs_the_commit_right(node_factory, tmp_path):
    node = node_factory(config=write_config(tmp_path / "access.toml", ACCESS))
    report = Dataset()
    report.TransactionUID = "1.2.3.203"
    report.ReferencedSOPSequence = [reference(CTImageStorage, "1.2.3.4")]
    for calling, expected in (("OTHER", 0x0124), ("MODALITY", 0x0000)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="COMPACS")
        assert assoc.is_established
        status, _ = assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assoc.release()
        assert status.Status == expected, calling


def test_the_work_one_commitment_request_can_cause_is_bounded(node):
    (uid,) = stored(node, 1)
    refs = [reference(CTImageStorage, uid)] * 10_001
    status, info = _commit(node.port, "COMMITSCU", "1.2.3.204", refs)
    assert status == 0x0213 and info is None  # Resource limitation, nothing read
    # the same object referenced 300 times is read and hashed once, and committed 300 times
    status, info = _commit(node.port, "COMMITSCU", "1.2.3.205", refs[:300])
    assert status == 0 and len(info.ReferencedSOPSequence) == 300
